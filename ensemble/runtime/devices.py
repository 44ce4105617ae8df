"""Process-wide TensorFlow settings that must be applied before TensorFlow touches a device."""

from __future__ import annotations

import logging

import tensorflow as tf

from ensemble.errors import EnsembleError

__all__ = ["configure_devices"]

log = logging.getLogger(__name__)


def configure_devices(*, memory_growth: bool = False, logical_cpus: int | None = None) -> None:
    """GPU memory growth (allocate as needed rather than all at once) and, for tests and
    placement on one machine, the CPU split into `logical_cpus` logical devices.

    A no-op for what the machine lacks (memory growth without a GPU). Must run before
    TensorFlow initialises its devices; afterwards it is an error that says so.
    """
    try:
        if memory_growth:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        if logical_cpus is not None:
            if logical_cpus < 1:
                raise EnsembleError(f"Expected logical_cpus >= 1. Received: {logical_cpus}")
            (cpu,) = tf.config.list_physical_devices("CPU")[:1]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)]
            )
    except RuntimeError as error:
        raise EnsembleError(
            "Device settings must be applied before TensorFlow initialises its devices (before "
            f"any model is built or loaded in this process): {error}"
        ) from None
    # Physical devices only: listing logical ones would initialise TensorFlow's context, after
    # which a multi-worker strategy can no longer configure its collective operations.
    log.info(
        "Device settings applied (memory_growth=%s, logical_cpus=%s) on %s",
        memory_growth,
        logical_cpus,
        [d.name for d in tf.config.list_physical_devices()],
    )
