"""Shipping ONE artifact: the SavedModel (TF Serving, in versions), ONNX, TFLite, and the one signature
builder."""

from ensemble.export.onnx import ONNX_MANIFEST_KEY, export_onnx, read_onnx_manifest, run_onnx
from ensemble.export.saved_model import MANIFEST, export_saved_model, export_version, read_manifest
from ensemble.export.signature import input_specs, serving_function
from ensemble.export.tflite import (
    QUANTIZATIONS,
    export_tflite,
    run_tflite,
    tflite_report,
)
from ensemble.export.versions import list_versions

__all__ = [
    "MANIFEST",
    "ONNX_MANIFEST_KEY",
    "QUANTIZATIONS",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "export_version",
    "input_specs",
    "list_versions",
    "read_manifest",
    "read_onnx_manifest",
    "run_onnx",
    "run_tflite",
    "serving_function",
    "tflite_report",
]
