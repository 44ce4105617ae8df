"""Which stacker: the candidates of `ensemble.fitting.stacker` (each member and the members'
arithmetic and geometric means as they come, each member and the arithmetic mean
temperature-scaled alone, a logistic regression shrunk toward zero or toward the selected
member temperature-scaled, at each C) scored on held-out stratified folds of the fitting rows,
and the chosen one refitted on every row to the graph's tolerance. Every fit adds the
calibration prior of `ensemble.fitting.temperature` (`PRIOR_ROWS` pseudo-rows labelled evenly
over the classes), so rows that are all ranked right cannot make a candidate certain.

Few fitting rows: with fewer than `REGRESSION_ROWS_PER_CLASS` (20) fitting rows of some class,
the regression's `members * classes^2` weights are noise, and only the candidates of at most one
parameter compete, which needs no stratified folds when a class has fewer rows than `cv`. The
one-standard-error rule (glmnet's `lambda.1se`) then picks the simplest (the plain mean as it
comes, then a member or the geometric mean as they come, then what fits a temperature) unless
the lowest held-out NLL beats it by more than `ONE_SE` standard errors of their paired row
differences: on 42 draws of 15-30 rows of iris, wine, breast_cancer and digits it cut the draws
that miss issue 27's target from 11 to 5, the mean ratio to the better of the selected member
and the plain mean from 1.09 to 1.00. With fewer rows than `cv` in all, nothing is fitted: the
choice is among the candidates as they come, on every fitting row. Each fallback is logged."""

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
    candidate_temperature,
    fit_stacker,
    held_out_rows,
    held_out_scores,
    mean_nll,
    scaled_prior,
    split_mean_block,
    with_mean_block,
)
from ensemble.fitting.temperature import PRIOR_ROWS, smoothed_targets

__all__ = ["PRIORS", "REGRESSION_ROWS_PER_CLASS", "cross_validated_stacker"]

log = logging.getLogger(__name__)

PRIORS = ("raw", "member", "zero", "selected")
"""The default kinds of candidate, in the order they are tried (equal scores go to the first)."""
REGRESSION_ROWS_PER_CLASS = 20
"""Below this many fitting rows of some class the default stacker fits no regression."""
ONE_SE = 1.0  # with few rows, a simpler candidate this many standard errors from the best wins
_ONE_PARAMETER = ("raw", "member", "mean")  # the kinds of at most one parameter
PLAIN_MEAN = ("mean_arith_raw", 0.0, None)  # the members' arithmetic mean as it comes
_SIMPLER = {"mean_arith_raw": 0, "raw": 1, "mean_raw": 1}  # then what fits a temperature: 2

Key = tuple[str, float, int | None]


def _candidates(
    features: np.ndarray,
    log_p: np.ndarray,
    labels: np.ndarray,
    Cs: tuple[float, ...],
    gtol: float,
    kinds: tuple[str, ...] = PRIORS,
    prior_rows: float = PRIOR_ROWS,
    mean_at: int | None = None,
) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """Every candidate's (kernel, bias) fitted on these rows, keyed (kind, C, member), in the
    order they are tried; `mean_at`: where the arithmetic-mean block starts, if there is one."""
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
    arithmetic = None if mean_at is None else np.zeros((width, classes))  # selects that block
    if arithmetic is not None:
        arithmetic[mean_at : mean_at + classes] = np.eye(classes)
    if "raw" in kinds:  # as they come: nothing fitted
        for j, unit in enumerate(units):
            fits[("raw", 0.0, j)] = (unit, zero_bias)
        if arithmetic is not None:
            fits[("mean_arith_raw", 0.0, None)] = (arithmetic, zero_bias)
        fits[("mean_raw", 0.0, None)] = (average, zero_bias)
    scores = {}
    for j, unit in enumerate(units if {"member", "selected"} & set(kinds) else []):
        prior = scaled_prior(features, labels, unit, prior_rows)
        if prior is not None:
            if "member" in kinds:
                fits[("member", 0.0, j)] = (prior, zero_bias)
            scores[j] = (mean_nll(features, labels, prior, zero_bias), prior)
    if arithmetic is not None and "member" in kinds:
        scaled = scaled_prior(features, labels, arithmetic, prior_rows)
        if scaled is not None:
            fits[("mean_arith", 0.0, None)] = (scaled, zero_bias)
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
    mean_feature: bool = True,
) -> Stacker:
    """The candidate with the lowest held-out NLL over `cv` stratified folds (few rows: the
    module's rule), refitted on every row. The `selected` prior's member is chosen on each
    training fold, so its held-out score is honest; equal scores go to the first tried.

    Args:
        features: the meta features `(rows, members * classes [+ d])`, the members'
            log-probabilities first (`StackingCombiner.meta_features`).
        log_p: the same log-probabilities as `(rows, members, classes)`.
        labels: `(rows,)` integer labels.
        cv: folds (`StratifiedKFold`, shuffled with `seed`; `KFold` when a class has fewer rows
            and only one-parameter candidates compete: the module's fallbacks).
        Cs: inverse penalties to try, ascending.
        priors: the kinds of candidate that compete: `"raw"` (each member, the members'
            arithmetic mean and their normalised geometric mean as they come: nothing fitted),
            `"member"` (each member and the arithmetic mean temperature-scaled alone), `"zero"`
            (the regression shrunk toward zero, as `LogisticRegressionCV`), `"selected"` (shrunk toward the selected member
            temperature-scaled), `"mean"` (the geometric mean temperature-scaled, alone and as
            a prior: not by default, it won on digits' folds and lost on its test split, NLL
            0.052 against 0.039). Only candidates at least as accurate, held out, as the member
            alone with the best held-out NLL compete on NLL.
        prior_rows: the calibration prior every fit adds (`ensemble.fitting.temperature`).
        mean_feature: whether the arithmetic-mean block (made here) is a feature (`mean_kernel`).
    """
    members, classes = log_p.shape[1], log_p.shape[2]
    mean_at = members * classes if mean_feature else None
    if mean_at is not None:
        features = with_mean_block(features, members, classes)
    counts = np.bincount(labels, minlength=classes)
    fewest, rare = int(counts.min()), int(counts.argmin())
    if len(labels) < cv:
        log.warning(
            "Stacking: %d fitting rows, fewer than cv=%d folds: nothing is fitted; the stacker is "
            "the member, or the members' mean, as they come with the lowest NLL on those rows.",
            len(labels),
            cv,
        )
        return split_mean_block(_fixed_choice(features, log_p, labels, mean_at), mean_at)
    kinds = tuple(priors)
    few = fewest < REGRESSION_ROWS_PER_CLASS
    if few:
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
        stacker = _cross_validated(
            features, log_p, labels, splitter, tuple(sorted(Cs)), kinds, prior_rows, mean_at, few
        )
    return split_mean_block(stacker, mean_at)


def _fixed_choice(
    features: np.ndarray, log_p: np.ndarray, labels: np.ndarray, mean_at: int | None
) -> Stacker:
    """The candidate that fits nothing with the lowest NLL on every row, among those as accurate
    as the most accurate member by NLL."""
    fits = _candidates(features, log_p, labels, (), GTOL, ("raw",), mean_at=mean_at)
    scores = {key: held_out_scores(features, labels, *fit) for key, fit in fits.items()}
    key = _ranked(scores)[0]
    kernel, bias = fits[key]
    cv_nll = {_label(k): v[0] for k, v in scores.items()}
    return Stacker(kernel, bias, key[0], 0.0, key[2], cv_nll, temperature=1.0)


def _one_standard_error(ranked: list[Key], losses: dict[Key, np.ndarray]) -> list[Key]:
    """`ranked` led by the simplest candidate (`_SIMPLER`, then NLL) within `ONE_SE` standard
    errors of paired row differences of the first's held-out NLL; the plain mean even where the
    accuracy floor set it aside (on so few rows, that floor is one held-out row)."""
    best = ranked[0]
    pool = ranked if PLAIN_MEAN in ranked else [PLAIN_MEAN, *ranked]
    for key in sorted(pool, key=lambda k: (_SIMPLER.get(k[0], 2), float(np.mean(losses[k])))):
        excess = losses[key] - losses[best]
        if key == best or excess.mean() <= ONE_SE * excess.std(ddof=1) / np.sqrt(len(excess)):
            return [key, *(k for k in ranked if k != key)]
    return ranked


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
    return kind if kind.startswith("mean") else f"{kind} C={C:g}"


def _cross_validated(
    features: np.ndarray,
    log_p: np.ndarray,
    labels: np.ndarray,
    splitter: KFold | StratifiedKFold,
    Cs: tuple[float, ...],
    priors: tuple[str, ...],
    prior_rows: float,
    mean_at: int | None,
    few_rows: bool = False,
) -> Stacker:
    held_out: dict[Key, list[tuple[float, float]]] = {}
    losses: dict[Key, list[np.ndarray]] = {}  # each held-out row's NLL, fold after fold
    cv = splitter.get_n_splits()
    for train, test in splitter.split(features, labels):
        fold = _candidates(
            features[train], log_p[train], labels[train], Cs, CV_GTOL, priors, prior_rows, mean_at
        )
        for (kind, inverse, which), (kernel, bias) in fold.items():
            # The selected member may differ by fold: its candidates are keyed without it.
            key = (kind, inverse, None if kind == "selected" else which)
            nll, correct = held_out_rows(features[test], labels[test], kernel, bias)
            held_out.setdefault(key, []).append((float(np.mean(nll)), float(np.mean(correct))))
            losses.setdefault(key, []).append(nll)
    # A candidate missing from a fold (a member no temperature fits there) does not compete.
    means = {
        key: (float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values])))
        for key, values in held_out.items()
        if len(values) == cv
    }
    ranked = _ranked(means)
    if few_rows and PLAIN_MEAN in means:
        ranked = _one_standard_error(ranked, {key: np.concatenate(losses[key]) for key in means})
    # The refit runs the chosen path only as far as its C, to the graph's tolerance.
    top = ranked[0][1]

    def refit(upto: float) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
        return _candidates(
            features, log_p, labels, tuple(c for c in Cs if c <= upto), GTOL, priors, prior_rows, mean_at
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
    temperature = candidate_temperature(found, kernel, log_p)
    return Stacker(kernel, bias, name, C, found[2], cv_nll, temperature=temperature)
