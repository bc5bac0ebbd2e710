"""Slack: employees ask in DMs, mentions, the App Home and ``/desk``; agents work in a
triage channel. ``convert`` holds the pure payload converters."""
