"""Which stacker: the candidates of `ensemble.fitting.stacker` (a logistic regression shrunk
toward zero or toward the selected member temperature-scaled, at each C, or one member
temperature-scaled alone) scored on held-out stratified folds of the fitting rows, and the
chosen one refitted on every row to the graph's tolerance."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold
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

__all__ = ["cross_validated_stacker"]


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
    onehot: np.ndarray,
    Cs: tuple[float, ...],
    gtol: float,
    kinds: tuple[str, ...] = ("zero", "selected", "member"),
) -> dict[tuple[str, float, int | None], tuple[np.ndarray, np.ndarray]]:
    """Every candidate's (kernel, bias) fitted on these rows, keyed (prior, C, member)."""
    members, classes = log_p.shape[1], onehot.shape[1]
    width = features.shape[1]
    fits: dict[tuple[str, float, int | None], tuple[np.ndarray, np.ndarray]] = {}
    scores = {}
    for j in range(members):
        unit = np.zeros((width, classes))
        unit[j * classes : (j + 1) * classes] = np.eye(classes)
        prior = scaled_prior(features, onehot, unit)
        if prior is not None:
            fits[("member", 0.0, j)] = (prior, np.zeros(classes))
            scores[j] = mean_nll(features, onehot.argmax(1), prior, np.zeros(classes))
    paths: list[tuple[str, np.ndarray, int | None]] = []
    mean = scaled_prior(features, onehot, mean_kernel(members, classes, width)) if "mean" in kinds else None
    if mean is not None:
        fits[("mean", 0.0, None)] = (mean, np.zeros(classes))
        paths.append(("mean", mean, None))
    if "zero" in kinds or not scores:  # also when no member takes a positive temperature
        paths.append(("zero", np.zeros((width, classes)), None))
    if scores and "selected" in kinds:
        chosen = min(scores, key=lambda j: scores[j])  # the best calibrated member on these rows
        paths.append(("selected", fits[("member", 0.0, chosen)][0], chosen))
    for name, prior, member in paths:
        start = (prior, np.zeros(classes))
        for C in Cs:
            start = fits[(name, C, member)] = fit_stacker(features, onehot, prior, C, start=start, gtol=gtol)
    return fits


def cross_validated_stacker(
    features: np.ndarray,
    log_p: np.ndarray,
    labels: np.ndarray,
    *,
    cv: int = 5,
    Cs: tuple[float, ...] = CS,
    seed: int = 0,
    priors: tuple[str, ...] = ("zero", "selected", "member"),
) -> Stacker:
    """The candidate with the lowest held-out NLL over `cv` stratified folds, refitted on every
    row. The `selected` prior's member is chosen on each training fold (as on every row for the
    refit), so its held-out score is honest; equal scores go to the first candidate tried.

    Args:
        features: the meta features `(rows, members * classes [+ d])`, the members'
            log-probabilities first (`StackingCombiner.meta_features`).
        log_p: the same log-probabilities as `(rows, members, classes)`.
        labels: `(rows,)` integer labels, every class present.
        cv: folds (`StratifiedKFold`, shuffled with `seed`).
        Cs: inverse penalties to try, ascending.
        priors: the kinds of candidate that compete besides each member temperature-scaled
            alone (always there: the accuracy floor is theirs): `"zero"` (the regression
            shrunk toward zero, as `LogisticRegressionCV`), `"selected"` (shrunk toward the
            selected member temperature-scaled), `"mean"` (the members' geometric mean
            temperature-scaled, alone and as a prior: not by default, it won on digits'
            folds and lost on its test split, NLL 0.052 against 0.039). Only candidates at
            least as accurate, held out, as the member alone with the best held-out NLL
            compete on NLL.
    """
    counts = np.bincount(labels, minlength=log_p.shape[2])
    if counts.min() < cv:
        # A fold without a class would push that class's bias to minus infinity, and its
        # held-out score would then depend on the solver's tolerance.
        rare = [int(c) for c in np.flatnonzero(counts < cv)]
        raise ValueError(
            f"Class(es) {rare[:10]} have fewer fitting rows ({int(counts.min())} at least) than the "
            f"{cv} cross-validation folds need: fit on more rows, pass a smaller cv, or a fixed C."
        )
    # Matrices this small run fastest on one BLAS thread, and do not fight other work for cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return _cross_validated(features, log_p, labels, cv, tuple(sorted(Cs)), seed, priors)


def _cross_validated(
    features: np.ndarray,
    log_p: np.ndarray,
    labels: np.ndarray,
    cv: int,
    Cs: tuple[float, ...],
    seed: int,
    priors: tuple[str, ...],
) -> Stacker:
    onehot = np.eye(log_p.shape[2])[labels]
    held_out: dict[tuple[str, float, int | str | None], list[tuple[float, float]]] = {}
    for train, test in StratifiedKFold(cv, shuffle=True, random_state=seed).split(features, labels):
        fold = _candidates(features[train], log_p[train], onehot[train], Cs, CV_GTOL, priors)
        for (kind, inverse, which), (kernel, bias) in fold.items():
            # The selected member may differ by fold: its candidates are keyed without it.
            key = (kind, inverse, which if kind == "member" else "")
            held_out.setdefault(key, []).append(_held_out_scores(features[test], labels[test], kernel, bias))
    # A candidate missing from a fold (a member no temperature fits there) does not compete.
    means = {key: np.mean(values, axis=0) for key, values in held_out.items() if len(values) == cv}
    totals = {key: float(nll) for key, (nll, _) in means.items()}
    # Never less accurate, held out, than the best member alone: a lower NLL bought with a
    # worse top class is not the answer one would ship. The floor is the held-out accuracy of the best member alone by held-out NLL (the one a
    # user would ship). Giving way by its standard error let a regression shrunk toward zero
    # through that lost 1.6 points of test accuracy to one dominant member.
    alone = [key for key in totals if key[0] == "member"]
    floor = float(means[min(alone, key=lambda key: totals[key])][1]) if alone else 0.0
    eligible = {key: nll for key, nll in totals.items() if means[key][1] >= floor - 1e-12}
    ranked = sorted(eligible, key=lambda key: eligible[key])
    # The refit runs the chosen path only as far as its C, to the graph's tolerance.
    top = ranked[0][1]
    fits = _candidates(
        features, log_p, onehot, tuple(c for c in Cs if c <= top) if top > 0 else (), GTOL, priors
    )
    # The first candidate the refit on every row has (a member a temperature fits on every fold
    # may find none on all rows; the full path is then refitted for the next).
    for name, C, member in ranked:
        found = next((k for k in fits if k[:2] == (name, C) and (name != "member" or k[2] == member)), None)
        if found is None and top < C:
            fits = _candidates(features, log_p, onehot, tuple(c for c in Cs if c <= C), GTOL, priors)
            found = next(
                (k for k in fits if k[:2] == (name, C) and (name != "member" or k[2] == member)), None
            )
        if found is not None:
            break
    else:
        raise ValueError("No stacker candidate could be refitted on every row.")
    kernel, bias = fits[found]
    scores = {f"{n}" + (f" C={c:g}" if n != "member" else f" {m}"): v for (n, c, m), v in totals.items()}
    return Stacker(kernel, bias, name, C, found[2], scores)
