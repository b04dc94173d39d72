"""Prometheus metrics of one agent (its own registry, so that several agents can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MiB = 1024 * 1024


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("zsagent_jobs", "Finished template jobs by result (success or ErrorCode code)",
                            ["result"], registry=r)
        self.bytes_read = Counter("zsagent_bytes_read", "Bytes read from volumes", registry=r)
        self.bytes_written = Counter("zsagent_bytes_written", "Data bytes written to backup storages",
                                     registry=r)
        self.bytes_hashed = Counter("zsagent_bytes_hashed", "Bytes fed to MD5 (the volumes' virtual sizes)",
                                    registry=r)
        self.copy_seconds = Histogram("zsagent_copy_duration_seconds", "Duration of successful copies",
                                      buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
                                      registry=r)
        self.throughput = Histogram("zsagent_copy_throughput_bytes_per_second",
                                    "Virtual bytes per second of successful copies",
                                    buckets=tuple(m * MiB for m in (10, 50, 100, 200, 300, 400, 500, 600, 800,
                                                                    1000, 2000)), registry=r)
        self.running = Gauge("zsagent_jobs_running", "Copies running now", registry=r)
        self.cleanup_pending = Gauge("zsagent_cleanup_pending",
                                     "Journalled leftovers of failed or interrupted jobs not yet removed",
                                     registry=r)
        self.cleanup_failures = Counter("zsagent_cleanup_failures", "Failed attempts to remove a leftover "
                                        "(each is retried with backoff)", registry=r)
        self.queued = Gauge("zsagent_jobs_queued", "Requests waiting for their volume or a free slot",
                            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
