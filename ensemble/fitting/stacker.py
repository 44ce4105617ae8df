"""The default stacker of classifiers, fitted exactly in NumPy/SciPy: a multinomial logistic
regression over the members' log-probabilities (and their arithmetic mean's), or one member or
the members' mean, temperature-scaled or as it comes, whichever cross-validation on the fitting
rows finds best.

The meta features `F` are the members' `log(clip(p, 1e-7, 1))`, `(rows, members * classes)`,
then, for the default fit, the block `log(mean_j clip(p_j, 1e-7, 1))` of their arithmetic mean
(`with_mean_block`; in the graph, `StackingCombiner.mean_kernel_` weighs it), then any
passthrough features. The stacker is `softmax(F (K0 + D) + b)`, with `D` fitted to minimise
`C * sum(NLL) + ||D||^2 / 2` (scikit-learn's convention; the bias `b` is not penalised) around
a prior kernel `K0`. The candidates compete on held-out NLL over stratified folds
(`ensemble.fitting.stacker_choice.cross_validated_stacker`), among those at least as accurate,
held out, as the member alone with the best held-out NLL (a lower NLL bought with a worse top
class is not the answer one would ship):

- `zero`: `K0 = 0`, scikit-learn's `LogisticRegressionCV` (it shrinks toward a uniform
  prediction, and can lose to one dominant member);
- `selected`: `K0` the selected member (best on the training folds) temperature-scaled, so
  the penalty shrinks toward the member one would ship alone, not toward zero;
- `member`, `mean_arith`: one member, or the members' arithmetic mean, temperature-scaled
  alone (`D = 0`);
- `raw`, `mean_arith_raw`, `mean_raw`: one member, the members' arithmetic mean, or their
  normalised geometric mean, as they come (nothing fitted: the choice between calibrating and
  not is made held out too). The plain mean is the kernel that selects its block: over the
  members' log-probabilities alone a log-linear head has only their geometric mean.

The default's fits add the calibration prior of `ensemble.fitting.temperature` (one pseudo-row
labelled evenly over the classes, as smoothed targets), so that fitting rows all ranked right
cannot drive a candidate to certainty; a given `C` fits one-hot targets, as scikit-learn does.

All are convex problems. L-BFGS with analytic gradients runs until the largest component of the
gradient of the mean objective is below `CV_GTOL` (enough to score candidates on held-out
folds); the fit that goes into the graph then takes Newton steps (trust-ncg, exact
Hessian-vector products) to a gradient norm of `GTOL`, which reaches scikit-learn's optimum at
`tol=1e-12` (tested). A warm path over the ascending `C`s keeps it fast.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize

from ensemble.fitting.temperature import PRIOR_ROWS, fit_scaling

__all__ = [
    "CS",
    "CV_GTOL",
    "GTOL",
    "Stacker",
    "candidate_temperature",
    "fit_stacker",
    "held_out_rows",
    "held_out_scores",
    "log_softmax",
    "mean_nll",
    "scaled_prior",
    "split_mean_block",
    "with_mean_block",
]

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
    kernel: np.ndarray  # (features, classes): K0 + D, over the meta features
    bias: np.ndarray  # (classes,)
    prior: str  # "raw", "mean_arith_raw", "mean_raw", "member", "mean_arith", "mean", "zero", "selected"
    C: float  # the inverse penalty on D; 0 for a candidate alone ("raw", "member", ...; D = 0)
    member: int | None  # the member of "raw", "member", "selected"; None otherwise
    cv_nll: dict[str, float] | None = None  # held-out NLL of every candidate tried
    temperature: float | None = None  # of a member or the mean alone (1: as it comes)
    mean_kernel: np.ndarray | None = None  # (classes, classes) on the arithmetic-mean block
    members: int = 0  # how many members' blocks the meta features start with (for that block)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """The stacker's class probabilities for meta features `(rows, features)`
        (`StackingCombiner.meta_features`: the arithmetic-mean block is made from them)."""
        features = np.asarray(features, "float64")
        z = features @ self.kernel + self.bias
        if self.mean_kernel is not None:
            classes = self.kernel.shape[1]
            z = z + _log_mean(features, self.members, classes) @ self.mean_kernel
        probabilities: np.ndarray = np.exp(log_softmax(z))
        return probabilities

    def describe(self, names: list[str] | None = None) -> str:
        """The candidate in words, members by name when `names` are given."""
        text = self._describe()
        if self.member is not None and names is not None:
            text = text.replace(f"member {self.member}", f"member {names[self.member]!r}")
        return text

    def as_dict(self, names: list[str] | None = None) -> dict[str, Any]:
        """What was chosen, as plain values (`metrics.json`'s `fit.chosen`)."""
        member = self.member if names is None or self.member is None else names[self.member]
        record: dict[str, Any] = {"candidate": self.prior, "C": self.C or None, "member": member}
        if self.temperature is not None:
            record["temperature"] = self.temperature
        record["description"] = self.describe(names)
        if self.cv_nll is not None:
            record["held_out_nll"] = dict(self.cv_nll)
        return record

    def _describe(self) -> str:
        if self.prior == "raw":
            return f"member {self.member} as it comes"
        if self.prior == "mean_raw":
            return "the members' geometric mean as it comes"
        if self.prior == "mean_arith_raw":
            return "the members' arithmetic mean as it comes"
        if self.prior == "member":
            return f"member {self.member} temperature-scaled alone"
        if self.prior == "mean_arith":
            return "the members' arithmetic mean temperature-scaled"
        if self.prior == "mean" and self.C == 0:
            return "the members' geometric mean temperature-scaled"
        around = {"zero": "zero", "mean": "the members' geometric mean temperature-scaled"}.get(
            self.prior, f"member {self.member} temperature-scaled"
        )
        return f"logistic regression at C={self.C:g}, shrunk toward {around}"


def _log_mean(features: np.ndarray, members: int, classes: int) -> np.ndarray:
    """`log(mean_j clip(p_j))` from the members' blocks `log(clip(p_j))` of the meta features,
    as `StackingCombiner.log_mean` computes it in the graph."""
    log_p = features[:, : members * classes].reshape(len(features), members, classes)
    result: np.ndarray = np.log(np.mean(np.exp(log_p), axis=1))
    return result


def with_mean_block(features: np.ndarray, members: int, classes: int) -> np.ndarray:
    """The meta features with the arithmetic-mean block after the members' (before passthrough)."""
    split = members * classes
    block = _log_mean(features, members, classes)
    return np.concatenate([features[:, :split], block, features[:, split:]], axis=1)


def split_mean_block(stacker: Stacker, mean_at: int | None) -> Stacker:
    """A stacker fitted on `with_mean_block` features (the block at row `mean_at` of its kernel)
    as one over the meta features: those rows become its `mean_kernel`."""
    if mean_at is None:
        return stacker
    classes = stacker.kernel.shape[1]
    rows = np.arange(mean_at, mean_at + classes)
    kernel = np.delete(stacker.kernel, rows, axis=0)
    return stacker._replace(kernel=kernel, mean_kernel=stacker.kernel[rows], members=mean_at // classes)


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def _softmax_residual(z: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of `targets` (rows summing to one) under `softmax(z)`, and its
    gradient in `z`."""
    log_q = log_softmax(z)
    return float(-np.sum(targets * log_q) / len(z)), (np.exp(log_q) - targets) / len(z)


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


def scaled_prior(
    features: np.ndarray, labels: np.ndarray, unit: np.ndarray, prior_rows: float = PRIOR_ROWS
) -> np.ndarray | None:
    """`unit` (a kernel: one member's block of ones, or every member's 1 / members) scaled by
    the temperature that fits `softmax(features @ unit)` to these rows (with `prior_rows`
    pseudo-rows, `ensemble.fitting.temperature`); None when no positive temperature fits (it
    ranks the true class no better than chance)."""
    try:
        scaling = fit_scaling(np.exp(log_softmax(features @ unit)), labels, prior_rows=prior_rows)
    except ValueError:
        return None
    kernel: np.ndarray = unit / scaling.temperature
    return kernel


def fit_stacker(
    features: np.ndarray,
    targets: np.ndarray,
    prior: np.ndarray,
    C: float,
    *,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    gtol: float = GTOL,
) -> tuple[np.ndarray, np.ndarray]:
    """The kernel `prior + D` and bias minimising `C * sum(NLL) + ||D||^2 / 2` (divided by the
    rows: the mean NLL plus `||D||^2 / (2 C rows)`), from `start` (kernel, bias) or the prior.
    `targets` are `(rows, classes)`: one-hot (scikit-learn's `LogisticRegression(C=C)` around a
    zero prior), or smoothed (`temperature.smoothed_targets`: the NLL of pseudo-rows added).

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
        value, residual = _softmax_residual(features @ (prior + deviation) + b, targets)
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
            q = np.exp(log_softmax(z))
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


def mean_nll(features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> float:
    log_q = log_softmax(features @ kernel + bias)
    return float(-np.mean(log_q[np.arange(len(labels)), labels]))


def held_out_rows(
    features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's NLL under a candidate `(kernel, bias)`, and whether its top class is right."""
    z = features @ kernel + bias
    return -log_softmax(z)[np.arange(len(labels)), labels], z.argmax(1) == labels


def held_out_scores(
    features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray
) -> tuple[float, float]:
    """(NLL, accuracy) of a candidate on held-out rows."""
    nll, correct = held_out_rows(features, labels, kernel, bias)
    return float(np.mean(nll)), float(np.mean(correct))


def candidate_temperature(
    key: tuple[str, float, int | None], kernel: np.ndarray, log_p: np.ndarray
) -> float | None:
    """The temperature of a candidate `(kind, C, member)` that is one member or a mean scaled
    (its block is `eye / T`, or `eye / (members T)` for the geometric mean); None otherwise."""
    kind, _, member = key
    classes, members = log_p.shape[2], log_p.shape[1]
    if kind in ("raw", "mean_raw", "mean_arith_raw"):
        return 1.0
    if kind == "member" and member is not None:
        return float(1.0 / kernel[member * classes, 0])
    if kind == "mean_arith":  # its block follows the members'
        return float(1.0 / kernel[members * classes, 0])
    if kind == "mean":
        return float(1.0 / (members * kernel[0, 0]))
    return None
