"""Channel adapters: one sub-package per platform, all implementing channels.base.Channel."""
