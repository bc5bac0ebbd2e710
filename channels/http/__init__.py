"""The one HTTP server: web chat, agent console, REST API, Slack HTTP events, health."""
