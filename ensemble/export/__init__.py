"""Shipping ONE artifact: the SavedModel (TF Serving), TFLite, and the one signature builder."""

from ensemble.export.saved_model import MANIFEST, export_saved_model, read_manifest
from ensemble.export.signature import input_specs, serving_function
from ensemble.export.tflite import (
    QUANTIZATIONS,
    export_tflite,
    run_tflite,
    tflite_report,
)

__all__ = [
    "MANIFEST",
    "QUANTIZATIONS",
    "export_saved_model",
    "export_tflite",
    "input_specs",
    "read_manifest",
    "run_tflite",
    "serving_function",
    "tflite_report",
]
