"""Datasets for the experiments and tests: bundled (scikit-learn) or from your files, split into
train (members), holdout (combiner) and test rows."""

from ensemble.data.dataset import SKLEARN_DATASETS, Dataset, load_dataset, split_dataset
from ensemble.data.files import load_csv, load_npz

__all__ = ["SKLEARN_DATASETS", "Dataset", "load_csv", "load_dataset", "load_npz", "split_dataset"]
