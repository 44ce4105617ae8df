"""Where the work runs: the Keras backend check, device settings, `tf.distribute` strategies."""

from ensemble.runtime.backend import configured_backend, require_tensorflow_backend
from ensemble.runtime.devices import configure_devices
from ensemble.runtime.distribute import (
    STRATEGIES,
    is_chief,
    make_strategy,
    parse_tf_config,
)

__all__ = [
    "STRATEGIES",
    "configure_devices",
    "configured_backend",
    "is_chief",
    "make_strategy",
    "parse_tf_config",
    "require_tensorflow_backend",
]
