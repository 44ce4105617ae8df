"""The default stacker of classifiers, fitted exactly in NumPy/SciPy: a multinomial logistic
regression over the members' log-probabilities, or one member temperature-scaled, whichever
cross-validation on the fitting rows finds best.

The meta features `F` are the members' `log(clip(p, 1e-7, 1))`, `(rows, members * classes)`
(then any passthrough features). The stacker is `softmax(F (K0 + D) + b)`, with `D` fitted to
minimise `C * sum(NLL) + ||D||^2 / 2` (scikit-learn's convention; the bias `b` is not
penalised) around a prior kernel `K0`. Three kinds of candidate compete on held-out NLL over
stratified folds (`cross_validated_stacker`), among those at least as accurate, held out, as
the member alone with the best held-out NLL (a lower NLL bought with a worse top class is not
the answer one would ship):

- `zero`: `K0 = 0`, scikit-learn's `LogisticRegressionCV` (it shrinks toward a uniform
  prediction, and can lose to one dominant member);
- `selected`: `K0` the selected member (best on the training folds) temperature-scaled, so
  the penalty shrinks toward the member one would ship alone, not toward zero;
- `member`: one member temperature-scaled, alone (`D = 0`).

All are convex problems. L-BFGS with analytic gradients runs until the largest component of the
gradient of the mean objective is below `CV_GTOL` (enough to score candidates on held-out
folds); the fit that goes into the graph then takes Newton steps (trust-ncg, exact
Hessian-vector products) to a gradient norm of `GTOL`, which reaches scikit-learn's optimum at
`tol=1e-12` (tested). A warm path over the ascending `C`s keeps it fast.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from scipy import optimize
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from combiners.stack import mean_kernel
from ensemble.fitting.temperature import fit_scaling

__all__ = ["CS", "GTOL", "Stacker", "cross_validated_stacker", "fit_stacker", "scaled_prior"]

log = logging.getLogger(__name__)

GTOL = 1e-9
"""L-BFGS stops when every component of the mean objective's gradient is below this (the fit
that goes into the graph)."""
CV_GTOL = 1e-5
"""The same for the candidates scored on held-out folds: their held-out NLL moves by far less
than the differences between candidates past this."""
CS = tuple(float(c) for c in np.logspace(-4, 2, 7))
"""The inverse penalties cross-validation tries, past the pool alone (`C = 0`)."""
_MAXITER = 20000


class Stacker(NamedTuple):
    kernel: np.ndarray  # (features, classes): K0 + D
    bias: np.ndarray  # (classes,)
    prior: str  # "zero", "selected", "mean" or "member"
    C: float  # the inverse penalty on D; 0 for a prior alone ("member", "mean"; D = 0)
    member: int | None  # the member of the prior ("selected", "member"); None for "zero"
    cv_nll: dict[str, float] | None = None  # held-out NLL of every candidate tried

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """The stacker's class probabilities for meta features `(rows, features)`."""
        probabilities: np.ndarray = np.exp(
            _log_softmax(np.asarray(features, "float64") @ self.kernel + self.bias)
        )
        return probabilities

    def describe(self) -> str:
        if self.prior == "member":
            return f"member {self.member} temperature-scaled alone"
        if self.prior == "mean" and self.C == 0:
            return "the members' geometric mean temperature-scaled"
        around = {"zero": "zero", "mean": "the members' geometric mean temperature-scaled"}.get(
            self.prior, f"member {self.member} temperature-scaled"
        )
        return f"logistic regression at C={self.C:g}, shrunk toward {around}"


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def _softmax_residual(z: np.ndarray, onehot: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of `onehot` under `softmax(z)`, and its gradient in `z`."""
    log_q = _log_softmax(z)
    return float(-np.sum(onehot * log_q) / len(z)), (np.exp(log_q) - onehot) / len(z)


def _minimize(objective, start: np.ndarray, gtol: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    result = optimize.minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"gtol": gtol, "ftol": 0.0, "maxiter": _MAXITER, "maxcor": 20},
    )
    if not result.success and np.max(np.abs(result.jac)) > 10 * gtol:
        log.warning(
            "Stacker: L-BFGS stopped early (%s); gradient %.2g", result.message, np.abs(result.jac).max()
        )
    x: np.ndarray = result.x
    return x


def scaled_prior(features: np.ndarray, onehot: np.ndarray, unit: np.ndarray) -> np.ndarray | None:
    """`unit` (a kernel: one member's block of ones, or every member's 1 / members) scaled by
    the temperature that fits `softmax(features @ unit)` to these rows; None when no positive
    temperature fits (it ranks the true class no better than chance)."""
    try:
        scaling = fit_scaling(np.exp(_log_softmax(features @ unit)), onehot.argmax(1))
    except ValueError:
        return None
    kernel: np.ndarray = unit / scaling.temperature
    return kernel


def fit_stacker(
    features: np.ndarray,
    onehot: np.ndarray,
    prior: np.ndarray,
    C: float,
    *,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    gtol: float = GTOL,
) -> tuple[np.ndarray, np.ndarray]:
    """The kernel `prior + D` and bias minimising `C * sum(NLL) + ||D||^2 / 2` (divided by the
    rows: the mean NLL plus `||D||^2 / (2 C rows)`), from `start` (kernel, bias) or the prior.

    L-BFGS runs to `CV_GTOL`; a tighter `gtol` is then reached by Newton steps on conjugate
    gradients (`trust-ncg` with exact Hessian-vector products), which L-BFGS approaches slowly.
    """
    rows, (width, classes) = len(features), prior.shape
    penalty = 1.0 / (C * rows)
    size = width * classes

    def split(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return params[:size].reshape(width, classes), params[size:]

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        deviation, b = split(params)
        value, residual = _softmax_residual(features @ (prior + deviation) + b, onehot)
        gradient = features.T @ residual + penalty * deviation
        return value + 0.5 * penalty * float(np.sum(deviation**2)), np.concatenate(
            [gradient.ravel(), residual.sum(0)]
        )

    kernel, bias = start if start is not None else (prior, np.zeros(classes))
    params = _minimize(objective, np.concatenate([(kernel - prior).ravel(), bias]), max(gtol, CV_GTOL))
    if gtol < CV_GTOL:

        def hessp(at: np.ndarray, direction: np.ndarray) -> np.ndarray:
            deviation, b = split(at)
            z = features @ (prior + deviation) + b
            q = np.exp(_log_softmax(z))
            d_kernel, d_bias = split(direction)
            dz = features @ d_kernel + d_bias
            h = (q * dz - q * np.sum(q * dz, axis=1, keepdims=True)) / rows
            return np.concatenate([(features.T @ h + penalty * d_kernel).ravel(), h.sum(0)])

        result = optimize.minimize(
            objective,
            params,
            jac=True,
            hessp=hessp,
            method="trust-ncg",
            options={"gtol": gtol, "maxiter": 200},
        )
        params = result.x
    deviation, b = split(params)
    return prior + deviation, b


def _held_out_nll(features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> float:
    log_q = _log_softmax(features @ kernel + bias)
    return float(-np.mean(log_q[np.arange(len(labels)), labels]))


def _held_out_scores(
    features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray
) -> tuple[float, float]:
    """(NLL, accuracy) of a candidate on held-out rows."""
    z = features @ kernel + bias
    log_q = _log_softmax(z)
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
            scores[j] = _held_out_nll(features, onehot.argmax(1), prior, np.zeros(classes))
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
        priors: the kinds of candidate that compete: `"zero"` (the regression shrunk toward
            zero, as `LogisticRegressionCV`), `"selected"` (shrunk toward the selected member
            temperature-scaled), `"member"` (each member temperature-scaled alone), `"mean"`
            (the members' geometric mean temperature-scaled, alone and as a prior: not by
            default, it won on digits' folds and lost on its test split, NLL 0.052 against
            0.039). Only candidates at least as accurate, held out, as the member alone with
            the best held-out NLL compete on NLL.
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
