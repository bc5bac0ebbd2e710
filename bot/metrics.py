"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

INBOUND = Counter(
    "deskbot_inbound_total",
    "Inbound messages by channel and outcome",
    ["channel", "outcome"],
    registry=REGISTRY,
)
HANDLE_SECONDS = Histogram(
    "deskbot_handle_seconds",
    "Time to handle one inbound message",
    ["channel"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
ROUND_MESSAGES = Histogram(
    "deskbot_handle_round_messages",
    "Inbound messages handled together in one transaction (a round)",
    registry=REGISTRY,
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
OUTBOX = Counter(
    "deskbot_outbox_total",
    "Outbox deliveries by channel and result",
    ["channel", "result"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "deskbot_outbox_backlog",
    "Outbox rows by status at the last scrape",
    ["status"],
    registry=REGISTRY,
)
