"""The benchmarks behind `python -m experiments.benchmark`: ratios measured side by side in one run.

- fit: `fit_combiner` (level-one pass once, then the combiner alone) against
  Keras `model.fit` of the whole frozen graph, for the same epochs and batch.
- inference: latency at batch 1 and throughput at a large batch of the ways
  to predict (a loop of `member.predict`, a loop of compiled members, Keras
  `predict` on the ensemble, `compiled_predict` with and without XLA, the
  exported SavedModel); against ONE member and the matmul peak: onnx, below.
- level_one_memory: the level-one pass over `level_one_rows` rows in a fresh process: peak memory
  above the inputs against the predictions' bytes, and what fingerprinting x allocates.
- overhead: the combiner and the uncertainty outputs against the members alone.
- memory: load time of the member files and of the export; resident memory per
  member against its weight bytes.
- onnx: `export_onnx` in onnxruntime against tf2onnx's command line on our SavedModel, the TF
  paths against ONE member's compiled call at batch 1, each path's share of the matmul peak at
  the large batch (onnxruntime's and TF's, timed in the same rounds).
- fusion: `fusion_members` members of one architecture with `fuse=False`, `fuse=True` and the
  default, in TF and onnxruntime, at batch 1 and the large batch.
- stacking: the default stacker's fit against `LogisticRegressionCV` on digits' meta features
  (1000 x 40; `+stacking_rows=`): seconds, choices, held-out quality, the optimum at C=1, the 3 s target.
"""

from experiments.benchmarks.fitting import bench_fit, bench_level_one_memory
from experiments.benchmarks.memory import bench_memory
from experiments.benchmarks.models import synthetic_ensemble, synthetic_mlps
from experiments.benchmarks.onnx import bench_fusion, bench_onnx
from experiments.benchmarks.speed import bench_inference, bench_overhead
from experiments.benchmarks.stacking import bench_stacking
from experiments.benchmarks.table import markdown

__all__ = [
    "bench_fit",
    "bench_fusion",
    "bench_inference",
    "bench_level_one_memory",
    "bench_memory",
    "bench_onnx",
    "bench_overhead",
    "bench_stacking",
    "markdown",
    "synthetic_ensemble",
    "synthetic_mlps",
]
