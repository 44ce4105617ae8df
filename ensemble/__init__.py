"""Ensembles of independently trained Keras/TensorFlow models in one graph.

The sub-packages follow the data flow: `members` (load) -> `graph` (build) -> `fitting` (fit,
without leakage) -> `evaluate` -> `export` -> `serve`; `runtime` says where it runs and `data`
holds the datasets of the experiments.
"""

from ensemble.runtime.backend import require_tensorflow_backend

require_tensorflow_backend()

from ensemble.errors import EnsembleError, MemberError, ModelLoadError  # noqa: E402
from ensemble.evaluate import evaluate_ensemble  # noqa: E402
from ensemble.export import (  # noqa: E402
    QUANTIZATIONS,
    export_onnx,
    export_saved_model,
    export_tflite,
    export_version,
    list_versions,
    read_manifest,
    run_tflite,
    tflite_report,
)
from ensemble.fitting import (  # noqa: E402
    FIT_METHODS,
    FitReport,
    LevelOneStore,
    add_conformal,
    calibrate_member,
    check_leakage,
    fit,
    fit_combiner,
    fit_layered,
    fit_mean_weights,
    fit_out_of_fold,
    fit_stacking,
    refit_full,
    stack_out_of_fold,
)
from ensemble.graph import (  # noqa: E402
    EnsembleView,
    build_ensemble,
    ensemble_combiner,
    ensemble_members,
    ensemble_task,
)
from ensemble.members import (  # noqa: E402
    FORMATS,
    InputSpec,
    Member,
    SavedModelLayer,
    detect_format,
    load_member,
    record_training_rows,
)
from ensemble.runtime import configure_devices  # noqa: E402
from ensemble.serve import ModelRegistry, compiled_predict  # noqa: E402
from ensemble.train import bag, boost, distill, snapshots, soup  # noqa: E402

__all__ = [
    "FIT_METHODS",
    "FORMATS",
    "QUANTIZATIONS",
    "EnsembleError",
    "EnsembleView",
    "FitReport",
    "InputSpec",
    "LevelOneStore",
    "Member",
    "MemberError",
    "ModelLoadError",
    "ModelRegistry",
    "SavedModelLayer",
    "add_conformal",
    "bag",
    "boost",
    "build_ensemble",
    "calibrate_member",
    "check_leakage",
    "compiled_predict",
    "configure_devices",
    "detect_format",
    "distill",
    "ensemble_combiner",
    "ensemble_members",
    "ensemble_task",
    "evaluate_ensemble",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "export_version",
    "fit",
    "fit_combiner",
    "fit_layered",
    "fit_mean_weights",
    "fit_out_of_fold",
    "fit_stacking",
    "list_versions",
    "load_member",
    "read_manifest",
    "record_training_rows",
    "refit_full",
    "run_tflite",
    "snapshots",
    "soup",
    "stack_out_of_fold",
    "tflite_report",
]
