"""Which stacker: the candidates of `ensemble.fitting.stacker` (each member and the members'
geometric mean as they come, each member temperature-scaled alone, a logistic regression shrunk
toward zero or toward the selected member temperature-scaled, at each C) scored on held-out
stratified folds of the fitting rows, and the chosen one refitted on every row to the graph's
tolerance. Every fit of a candidate adds the calibration prior of `ensemble.fitting.temperature`
(`PRIOR_ROWS` pseudo-rows labelled evenly over the classes), so rows that are all ranked right
cannot make a candidate certain.

Few fitting rows: with fewer than `REGRESSION_ROWS_PER_CLASS` (20) fitting rows of some class,
the regression's `members * classes^2` weights are noise, and only the candidates with at most
one parameter compete (each member and the geometric mean as they come, or temperature-scaled
alone); their one parameter does not depend on a class, so the folds need not be stratified
when a class has fewer rows than `cv`. With fewer rows than `cv` in all, nothing is fitted: the
choice is among the candidates as they come, scored on every fitting row. Each fallback is
logged."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from combiners.stack import mean_kernel
from ensemble.fitting.stacker import (
    CS,
    CV_GTOL,
    GTOL,
    Stacker,
    fit_stacker,
    log_softmax,
    mean_nll,
    scaled_prior,
)
from ensemble.fitting.temperature import PRIOR_ROWS, smoothed_targets

__all__ = ["PRIORS", "REGRESSION_ROWS_PER_CLASS", "cross_validated_stacker"]

log = logging.getLogger(__name__)

PRIORS = ("raw", "member", "zero", "selected")
"""The default kinds of candidate, in the order they are tried (equal scores go to the first)."""
REGRESSION_ROWS_PER_CLASS = 20
"""Below this many fitting rows of some class the default stacker fits no regression."""
_FIXED = ("raw", "mean_raw")  # candidates that fit nothing
_ONE_PARAMETER = (*_FIXED, "member", "mean")

Key = tuple[str, float, int | None]


def _held_out_scores(
    features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray
) -> tuple[float, float]:
    """(NLL, accuracy) of a candidate on held-out rows."""
    z = features @ kernel + bias
    log_q = log_softmax(z)
    return float(-np.mean(log_q[np.arange(len(labels)), labels])), float(np.mean(z.argmax(1) == labels))


def _candidates(
    features: np.ndarray,
    log_p: np.ndarray,
    labels: np.ndarray,
    Cs: tuple[float, ...],
    gtol: float,
    kinds: tuple[str, ...] = PRIORS,
    prior_rows: float = PRIOR_ROWS,
) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """Every candidate's (kernel, bias) fitted on these rows, keyed (kind, C, member), in the
    order they are tried."""
    members, classes = log_p.shape[1], log_p.shape[2]
    width = features.shape[1]
    targets = smoothed_targets(labels, classes, prior_rows)
    zero_bias = np.zeros(classes)
    fits: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
    units = []
    for j in range(members):
        unit = np.zeros((width, classes))
        unit[j * classes : (j + 1) * classes] = np.eye(classes)
        units.append(unit)
    average = mean_kernel(members, classes, width)
    if "raw" in kinds:  # as they come: nothing fitted
        for j, unit in enumerate(units):
            fits[("raw", 0.0, j)] = (unit, zero_bias)
        fits[("mean_raw", 0.0, None)] = (average, zero_bias)
    scores = {}
    for j, unit in enumerate(units if {"member", "selected"} & set(kinds) else []):
        prior = scaled_prior(features, labels, unit, prior_rows)
        if prior is not None:
            if "member" in kinds:
                fits[("member", 0.0, j)] = (prior, zero_bias)
            scores[j] = (mean_nll(features, labels, prior, zero_bias), prior)
    paths: list[tuple[str, np.ndarray, int | None]] = []
    mean = scaled_prior(features, labels, average, prior_rows) if "mean" in kinds else None
    if mean is not None:
        fits[("mean", 0.0, None)] = (mean, zero_bias)
        paths.append(("mean", mean, None))
    if "zero" in kinds or not fits:  # also when nothing else could be fitted
        paths.append(("zero", np.zeros((width, classes)), None))
    if scores and "selected" in kinds:
        chosen = min(scores, key=lambda j: scores[j][0])  # the best calibrated member on these rows
        paths.append(("selected", scores[chosen][1], chosen))
    for name, prior, member in paths:
        start = (prior, zero_bias)
        for C in Cs:
            start = fits[(name, C, member)] = fit_stacker(features, targets, prior, C, start=start, gtol=gtol)
    return fits


def cross_validated_stacker(
    features: np.ndarray,
    log_p: np.ndarray,
    labels: np.ndarray,
    *,
    cv: int = 5,
    Cs: tuple[float, ...] = CS,
    seed: int = 0,
    priors: tuple[str, ...] = PRIORS,
    prior_rows: float = PRIOR_ROWS,
) -> Stacker:
    """The candidate with the lowest held-out NLL over `cv` stratified folds, refitted on every
    row. The `selected` prior's member is chosen on each training fold (as on every row for the
    refit), so its held-out score is honest; equal scores go to the first candidate tried.

    Args:
        features: the meta features `(rows, members * classes [+ d])`, the members'
            log-probabilities first (`StackingCombiner.meta_features`).
        log_p: the same log-probabilities as `(rows, members, classes)`.
        labels: `(rows,)` integer labels.
        cv: folds (`StratifiedKFold`, shuffled with `seed`; `KFold` when a class has fewer rows
            and only one-parameter candidates compete: the module's fallbacks).
        Cs: inverse penalties to try, ascending.
        priors: the kinds of candidate that compete: `"raw"` (each member and the members'
            normalised geometric mean as they come: nothing fitted), `"member"` (each member
            temperature-scaled alone), `"zero"` (the regression shrunk toward zero, as
            `LogisticRegressionCV`), `"selected"` (shrunk toward the selected member
            temperature-scaled), `"mean"` (the geometric mean temperature-scaled, alone and as
            a prior: not by default, it won on digits' folds and lost on its test split, NLL
            0.052 against 0.039). Only candidates at least as accurate, held out, as the member
            alone with the best held-out NLL compete on NLL.
        prior_rows: the calibration prior every fit adds (`ensemble.fitting.temperature`).
    """
    classes = log_p.shape[2]
    counts = np.bincount(labels, minlength=classes)
    fewest, rare = int(counts.min()), int(counts.argmin())
    if len(labels) < cv:
        log.warning(
            "Stacking: %d fitting rows, fewer than cv=%d folds: nothing is fitted; the stacker is "
            "the member, or the members' mean, as they come with the lowest NLL on those rows.",
            len(labels),
            cv,
        )
        return _fixed_choice(features, log_p, labels)
    kinds = tuple(priors)
    if fewest < REGRESSION_ROWS_PER_CLASS:
        kinds = tuple(kind for kind in kinds if kind in _ONE_PARAMETER) or ("raw",)
        log.warning(
            "Stacking: %d fitting rows, %d of class %d (fewer than %d): only the candidates of at "
            "most one parameter compete (%s), not the regression.",
            len(labels),
            fewest,
            rare,
            REGRESSION_ROWS_PER_CLASS,
            ", ".join(kinds),
        )
    # One parameter shared by the classes needs no stratified folds; a class bias does.
    splitter: KFold | StratifiedKFold = (
        StratifiedKFold(cv, shuffle=True, random_state=seed)
        if fewest >= cv
        else KFold(cv, shuffle=True, random_state=seed)
    )
    # Matrices this small run fastest on one BLAS thread, and do not fight other work for cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return _cross_validated(features, log_p, labels, splitter, tuple(sorted(Cs)), kinds, prior_rows)


def _fixed_choice(features: np.ndarray, log_p: np.ndarray, labels: np.ndarray) -> Stacker:
    """The candidate that fits nothing with the lowest NLL on every row, among those as accurate
    as the most accurate member by NLL."""
    fits = _candidates(features, log_p, labels, (), GTOL, ("raw",))
    scores = {key: _held_out_scores(features, labels, *fit) for key, fit in fits.items()}
    key = _ranked(scores)[0]
    kernel, bias = fits[key]
    cv_nll = {_label(k): v[0] for k, v in scores.items()}
    return Stacker(kernel, bias, key[0], 0.0, key[2], cv_nll, temperature=1.0)


def _ranked(means: dict[Key, tuple[float, float]]) -> list[Key]:
    """The candidates by (held-out) NLL, equal scores in the order tried, among those at least
    as accurate as the member alone with the lowest NLL (as it comes or temperature-scaled: the
    same top class). A lower NLL bought with a worse top class is not the answer one would
    ship: giving way by its standard error let a regression shrunk toward zero through that
    lost 1.6 points of test accuracy to one dominant member."""
    alone = [key for key in means if key[0] in ("member", "raw")]
    floor = float(means[min(alone, key=lambda key: means[key][0])][1]) if alone else 0.0
    eligible = [key for key in means if means[key][1] >= floor - 1e-12]
    return sorted(eligible, key=lambda key: means[key][0])


def _label(key: Key) -> str:
    kind, C, member = key
    if kind in ("member", "raw"):
        return f"{kind} {member}"
    return kind if kind in ("mean", "mean_raw") else f"{kind} C={C:g}"


def _cross_validated(
    features: np.ndarray,
    log_p: np.ndarray,
    labels: np.ndarray,
    splitter: KFold | StratifiedKFold,
    Cs: tuple[float, ...],
    priors: tuple[str, ...],
    prior_rows: float,
) -> Stacker:
    held_out: dict[Key, list[tuple[float, float]]] = {}
    cv = splitter.get_n_splits()
    for train, test in splitter.split(features, labels):
        fold = _candidates(features[train], log_p[train], labels[train], Cs, CV_GTOL, priors, prior_rows)
        for (kind, inverse, which), (kernel, bias) in fold.items():
            # The selected member may differ by fold: its candidates are keyed without it.
            key = (kind, inverse, None if kind == "selected" else which)
            held_out.setdefault(key, []).append(_held_out_scores(features[test], labels[test], kernel, bias))
    # A candidate missing from a fold (a member no temperature fits there) does not compete.
    means = {
        key: (float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values])))
        for key, values in held_out.items()
        if len(values) == cv
    }
    ranked = _ranked(means)
    # The refit runs the chosen path only as far as its C, to the graph's tolerance.
    top = ranked[0][1]

    def refit(upto: float) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
        return _candidates(
            features, log_p, labels, tuple(c for c in Cs if c <= upto), GTOL, priors, prior_rows
        )

    fits = refit(top)
    # The first candidate the refit on every row has (a member a temperature fits on every fold
    # may find none on all rows; the full path is then refitted for the next).
    for name, C, member in ranked:
        found = next((k for k in fits if k[:2] == (name, C) and (name == "selected" or k[2] == member)), None)
        if found is None and top < C:
            fits = refit(C)
            found = next(
                (k for k in fits if k[:2] == (name, C) and (name == "selected" or k[2] == member)), None
            )
        if found is not None:
            break
    else:
        raise ValueError("No stacker candidate could be refitted on every row.")
    kernel, bias = fits[found]
    cv_nll = {_label(key): nll for key, (nll, _) in means.items()}
    return Stacker(kernel, bias, name, C, found[2], cv_nll, temperature=_temperature(found, kernel, log_p))


def _temperature(key: Key, kernel: np.ndarray, log_p: np.ndarray) -> float | None:
    """The temperature of a candidate that is one member or the mean scaled (its kernel's
    block is `eye / T`, or `eye / (members T)`); None for a regression."""
    kind, _, member = key
    classes, members = log_p.shape[2], log_p.shape[1]
    if kind in ("raw", "mean_raw"):
        return 1.0
    if kind == "member" and member is not None:
        return float(1.0 / kernel[member * classes, 0])
    if kind == "mean":
        return float(1.0 / (members * kernel[0, 0]))
    return None
