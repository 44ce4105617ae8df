"""Serving: many models in one process (the registry, with request batching), and a compiled
predict path for ensembles that are never exported."""

from ensemble.serve.compiled import compiled_predict
from ensemble.serve.loaded import process_rss_bytes
from ensemble.serve.registry import ModelRegistry, ModelStats

__all__ = ["ModelRegistry", "ModelStats", "compiled_predict", "process_rss_bytes"]
