"""Datasets for the experiments and tests: bundled (scikit-learn) or from your files, split into
train (members), holdout (combiner) and test rows."""

from ensemble.data.dataset import SKLEARN_DATASETS, Dataset, load_dataset, split_dataset
from ensemble.data.files import load_csv, load_npz
from ensemble.data.ood import OOD_KINDS, ood_rows

__all__ = [
    "OOD_KINDS",
    "SKLEARN_DATASETS",
    "Dataset",
    "load_csv",
    "load_dataset",
    "load_npz",
    "ood_rows",
    "split_dataset",
]
