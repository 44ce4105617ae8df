"""Fitting the combiner on rows no member trained on: the level-one store, out-of-fold
predictions, the leakage guard, one fit function per kind of combiner, behind `fit`; and
split-conformal sets calibrated on held-out rows (`add_conformal`)."""

from ensemble.fitting.conformal import add_conformal, conformal_config
from ensemble.fitting.conformal_split import SplitConformal, conformal_metrics
from ensemble.fitting.guard import check_leakage
from ensemble.fitting.head import CombinerHead, fit_combiner
from ensemble.fitting.level_one import LevelOneStore, distributed_level_one
from ensemble.fitting.mean_weights import fit_mean_weights
from ensemble.fitting.member_calibration import calibrate_member
from ensemble.fitting.out_of_fold import (
    FitPredict,
    OutOfFold,
    out_of_fold_predictions,
    stack_out_of_fold,
)
from ensemble.fitting.pipeline import FIT_METHODS, FitReport, fit, fit_layered, fit_out_of_fold
from ensemble.fitting.refit import refit_full
from ensemble.fitting.selection import ensemble_selection, optimal_weights
from ensemble.fitting.stacking import fit_stacking

__all__ = [
    "FIT_METHODS",
    "CombinerHead",
    "FitPredict",
    "FitReport",
    "LevelOneStore",
    "OutOfFold",
    "SplitConformal",
    "add_conformal",
    "calibrate_member",
    "check_leakage",
    "conformal_config",
    "conformal_metrics",
    "distributed_level_one",
    "ensemble_selection",
    "fit",
    "fit_combiner",
    "fit_layered",
    "fit_mean_weights",
    "fit_out_of_fold",
    "fit_stacking",
    "optimal_weights",
    "out_of_fold_predictions",
    "refit_full",
    "stack_out_of_fold",
]
