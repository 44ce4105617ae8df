"""Serving: many models in one process (the registry, with request batching), a compiled
predict path for ensembles that are never exported, and TF Serving's REST API over HTTP
(`ensemble.serve.http`, the serve extra) for the models of a `Catalog`."""

from ensemble.serve.catalog import Catalog
from ensemble.serve.compiled import compiled_predict
from ensemble.serve.load import load_registry
from ensemble.serve.loaded import process_rss_bytes
from ensemble.serve.registry import ModelRegistry, ModelSignature, ModelStats

__all__ = [
    "Catalog",
    "ModelRegistry",
    "ModelSignature",
    "ModelStats",
    "compiled_predict",
    "load_registry",
    "process_rss_bytes",
]
