"""TF Serving's REST API on 127.0.0.1:8501 over a registry of models, from config (conf/serve/).

python -m experiments.serve                                  # the zoo's members, e.g. /v1/models/mlp
python -m experiments.serve 'serve.models={digits: outputs/<run>/export}' serve.port=8600
python -m experiments.serve registry.max_loaded=2 registry.batch_window_ms=5

Needs the serve extra: pip install -e ".[serve]".
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from ensemble import ModelRegistry, configure_devices
from ensemble.serve.catalog import Catalog
from experiments.job import members_config, register_models

__all__ = ["catalog_of"]

log = logging.getLogger(__name__)


def catalog_of(cfg: DictConfig) -> Catalog:
    """The configured models (`serve.models`, else the zoo's members) over the registry."""
    registry = ModelRegistry(max_loaded=cfg.registry.max_loaded, batch_window_ms=cfg.registry.batch_window_ms)
    models = cfg.serve.models
    catalog = Catalog(registry)
    register_models(catalog, models if models is not None else members_config(cfg, instantiate(cfg.data)))
    return catalog


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    # Before anything builds or loads a model: TensorFlow fixes its devices then.
    configure_devices(memory_growth=cfg.runtime.memory_growth, logical_cpus=cfg.runtime.logical_cpus)
    from ensemble.serve.http import create_app, serve  # the serve extra

    catalog = catalog_of(cfg)
    log.info("Serving %s (uvicorn logs the address)", catalog.names)
    settings = cfg.serve
    app = create_app(
        catalog,
        max_body_bytes=int(settings.max_body_mb * 2**20),
        body_timeout_s=settings.body_timeout_s,
        max_rows=settings.max_rows,
        max_in_flight=settings.max_in_flight,
        max_answer_values=settings.max_answer_values,
    )
    serve(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.timeout_keep_alive,
    )


if __name__ == "__main__":
    main()
