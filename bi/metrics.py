"""The mart's Prometheus metrics (in the process-wide registry of :mod:`observability`)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge

from observability import REGISTRY

#: How far the mart is behind each topic it reads (contract names): seconds and messages.
LAG_SECONDS = Gauge("gcp_bi_lag_seconds", "Age of the oldest message the mart has not applied yet "
                    "(0 when caught up)", ["topic"], registry=REGISTRY, multiprocess_mode="livemax")
LAG_MESSAGES = Gauge("gcp_bi_lag_messages", "Messages the mart has not applied yet", ["topic"],
                     registry=REGISTRY, multiprocess_mode="livemax")
#: Anomalies recorded in bi.anomaly, by kind and topic.
ANOMALIES = Counter("gcp_bi_anomalies_total", "Anomalies the mart found in its input", ["kind", "topic"],
                    registry=REGISTRY)
#: Messages consumed, by topic and outcome (applied, duplicate, not_applied, invalid).
MESSAGES = Counter("gcp_bi_messages_total", "Messages consumed by the mart", ["topic", "outcome"],
                   registry=REGISTRY)
#: Daily snapshots closed.
DAYS_CLOSED = Counter("gcp_bi_days_closed_total", "Daily snapshots closed", registry=REGISTRY)
