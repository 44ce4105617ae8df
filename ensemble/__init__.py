"""Ensembles of independently trained Keras/TensorFlow models in one graph."""

from ensemble._backend import require_tensorflow_backend

require_tensorflow_backend()

from ensemble.build import build_ensemble, ensemble_combiner, ensemble_members, ensemble_task  # noqa: E402
from ensemble.errors import EnsembleError, MemberError  # noqa: E402
from ensemble.export import export_saved_model, read_manifest  # noqa: E402
from ensemble.loading import FORMATS, detect_format, load_member  # noqa: E402
from ensemble.member import InputSpec, Member  # noqa: E402
from ensemble.registry import ModelRegistry  # noqa: E402
from ensemble.savedmodel import SavedModelLayer  # noqa: E402
from ensemble.runtime import configure_devices  # noqa: E402
from ensemble.serving import compiled_predict  # noqa: E402
from ensemble.tflite import QUANTIZATIONS, export_tflite, run_tflite, tflite_report  # noqa: E402

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "EnsembleError",
    "InputSpec",
    "Member",
    "MemberError",
    "ModelRegistry",
    "SavedModelLayer",
    "build_ensemble",
    "compiled_predict",
    "configure_devices",
    "detect_format",
    "ensemble_combiner",
    "ensemble_members",
    "ensemble_task",
    "export_saved_model",
    "export_tflite",
    "load_member",
    "read_manifest",
    "run_tflite",
    "tflite_report",
]
