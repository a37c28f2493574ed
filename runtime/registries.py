"""Each program's own Prometheus registry (server/metrics.py says why a program keeps its
own): made here once, with the process's collectors every program serves beside its
metrics."""

from __future__ import annotations

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry


def program_registry() -> CollectorRegistry:
    """A new registry holding the process's CPU, memory, platform and GC collectors."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry
