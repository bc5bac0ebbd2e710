"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

REGISTRY = CollectorRegistry()

if values.ValueClass is not values.MutexValue:  # one of several workers (bot/workers.py)
    # each value asks the process id on every change, to notice a fork; a worker is a
    # process of its own, started from scratch (never forked), so its id is read once
    _WORKER_PID = os.getpid()
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _WORKER_PID)

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
    multiprocess_mode="mostrecent",  # with several workers: the last scrape's count
)


def scrape_registry() -> CollectorRegistry:
    """What ``/metrics`` reports: this process's metrics; or, when several workers share
    one port (``DESKBOT_WORKERS``: the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for
    them before this module is imported, so every value lives in a file of its worker),
    every worker's added up, whichever worker takes the scrape."""
    if values.ValueClass is values.MutexValue:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
