"""The registry's counters per model as Prometheus metrics, for the HTTP server's /metrics
(prometheus-client: the serve extra)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ensemble.serve.catalog import Catalog

__all__ = ["RegistryCollector"]


class RegistryCollector:
    """The registry's counters per registered model, read when /metrics is scraped."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def collect(self) -> Iterator[Any]:
        report = self.catalog.registry.report()
        families = {
            "loads": CounterMetricFamily("ensemble_model_loads", "Loads of the model", labels=["model"]),
            "failures": CounterMetricFamily("ensemble_model_load_failures", "Failed loads", labels=["model"]),
            "evictions": CounterMetricFamily("ensemble_model_evictions", "LRU evictions", labels=["model"]),
            "model_calls": CounterMetricFamily(
                "ensemble_model_calls", "Calls of the model", labels=["model"]
            ),
        }
        loaded = GaugeMetricFamily(
            "ensemble_model_loaded", "1 while the model is in memory", labels=["model"]
        )
        for name, stats in report["models"].items():
            for key, family in families.items():
                family.add_metric([name], stats[key])
            loaded.add_metric([name], float(stats["loaded"]))
        yield from families.values()
        yield loaded
        yield GaugeMetricFamily("ensemble_resident_memory_bytes", "Process RSS", value=report["rss_bytes"])
