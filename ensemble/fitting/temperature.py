"""Post-hoc calibration fitted exactly: temperature scaling and vector scaling (Guo et al.,
2017), in NumPy/SciPy on class probabilities `(rows, classes)` and integer labels.

Both rescale log-probabilities, `softmax(log(p) * scale + bias)`, with `log(p)` clipped as the
graph's `combiners.Calibration` layer clips it, so that what is fitted here is what the graph
computes. Temperature scaling has one scale `1 / T` and no bias; vector scaling one scale and
one bias per class. The NLL is convex in those parameters (the logits are linear in them), so
L-BFGS with an analytic gradient, run to a gradient norm of `GTOL`, finds the optimum.

The likelihood alone has no optimum when every fitting row is ranked right: it asks for a
temperature ever closer to 0, a model certain of every answer, and the first wrong answer on a
new row then costs tens of nats (30 iris rows, all right: T = 0.033, test NLL 4.5x the member
as it comes). So by default the fit adds `PRIOR_ROWS` pseudo-row whose label is spread evenly
over the classes (a Dirichlet prior on the answer; Laplace's rule of succession): the targets
become `(n * onehot + 1 / classes) / (n + 1)`, a model can be no surer on the fitting rows than
`n` right answers in `n` warrant, and the prior's weight falls as `1 / (n + 1)` with more rows
(360 rows: 0.3%). `prior_rows=0` fits the plain maximum likelihood (Guo et al.).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize, special

from combiners.stack import LOG_EPSILON
from ensemble.fitting.arrays import checked_labels

__all__ = [
    "GTOL",
    "PRIOR_ROWS",
    "Scaling",
    "calibrated",
    "fit_scaling",
    "log_probabilities",
    "smoothed_targets",
]

log = logging.getLogger(__name__)

GTOL = 1e-9
"""L-BFGS stops when every component of the NLL's gradient is below this."""
METHODS = ("temperature", "vector")
VECTOR_PRIOR = 1.0
"""The L2 weight that keeps vector scaling finite: on the summed NLL, around the identity."""
PRIOR_ROWS = 1.0
"""Pseudo-rows, their label spread evenly over the classes, that every calibration fit adds to
its rows by default: a bound on how sure separable fitting rows can make a model."""


def smoothed_targets(labels: np.ndarray, classes: int, prior_rows: float) -> np.ndarray:
    """One-hot targets with `prior_rows` pseudo-rows spread evenly over the classes and over the
    rows: `(n * onehot + prior_rows / classes) / (n + prior_rows)` for `n` rows. The mean
    cross-entropy against them is the NLL of the rows plus that of the pseudo-rows, per row."""
    if not (np.isfinite(prior_rows) and prior_rows >= 0):
        raise ValueError(
            f"Expected prior_rows to be a finite number >= 0. Received: prior_rows={prior_rows!r}"
        )
    rows = len(labels)
    onehot = np.eye(classes)[labels]
    result: np.ndarray = (rows * onehot + prior_rows / classes) / (rows + prior_rows)
    return result


class Scaling(NamedTuple):
    """A fitted calibration: `softmax(log(p) / temperature)`, or with `scale`/`bias` per class
    (vector scaling) `softmax(log(p) * scale + bias)`."""

    method: str
    temperature: float = 1.0
    scale: tuple[float, ...] | None = None
    bias: tuple[float, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"method": self.method, "temperature": self.temperature}
        if self.scale is not None:
            record.update(scale=list(self.scale), bias=list(self.bias or ()))
        return record


def log_probabilities(probabilities: Any) -> np.ndarray:
    """`log(clip(p, 1e-7, 1))` in float64, the graph's clip (`combiners.stack.LOG_EPSILON`)."""
    result: np.ndarray = np.log(np.clip(np.asarray(probabilities, dtype="float64"), LOG_EPSILON, 1.0))
    return result


def calibrated(probabilities: Any, scaling: Scaling) -> np.ndarray:
    """`probabilities` after `scaling`, as the graph's `Calibration` layer computes them."""
    logits = log_probabilities(probabilities)
    if scaling.scale is not None:
        logits = logits * np.asarray(scaling.scale) + np.asarray(scaling.bias)
    else:
        logits = logits / scaling.temperature
    result: np.ndarray = special.softmax(logits, axis=-1)
    return result


def fit_scaling(
    probabilities: Any, labels: Any, *, method: str = "temperature", prior_rows: float = PRIOR_ROWS
) -> Scaling:
    """The temperature (or per-class scale and bias) minimising the NLL of `labels`, with
    `prior_rows` pseudo-rows labelled evenly over the classes (the module's prior).

    Args:
        probabilities: `(rows, classes)` class probabilities of rows the model did not train on.
        labels: `(rows,)` integer labels.
        method: `"temperature"` (one parameter) or `"vector"` (2 x classes).
        prior_rows: the pseudo-rows (default `PRIOR_ROWS`); 0 for the plain maximum likelihood,
            which rows all classified right drive to a temperature as sharp as the solver's
            tolerance allows (the log says so).

    Returns:
        The `Scaling`; a temperature above 1 softens an overconfident model. Vector scaling also
        has a standard-normal prior around the identity (`VECTOR_PRIOR`).
    """
    if method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}. Received: method={method!r}")
    logits = log_probabilities(probabilities)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(
            f"Expected probabilities of shape (rows, classes). Received: shape {np.shape(probabilities)}"
        )
    if not np.isfinite(logits).all():
        raise ValueError("Expected finite probabilities to calibrate. Received: NaN or inf")
    targets = checked_labels(np.asarray(labels), logits.shape[1])
    if len(targets) != len(logits):
        raise ValueError(f"Expected one label per row ({len(logits)}). Received: {len(targets)}")
    classes = logits.shape[1]
    soft = smoothed_targets(targets, classes, prior_rows)
    vector = method == "vector"

    start = np.concatenate([np.ones(classes), np.zeros(classes)]) if vector else np.ones(1)
    # Vector scaling's 2 x classes parameters run off to infinity when the fitting rows of a
    # class are separable by its own log-probability; a standard-normal prior around the
    # identity (scikit-learn's L2 at C=1: the summed NLL + ||params - identity||^2 / 2) bounds
    # them. Temperature scaling's one parameter is fitted exactly.
    prior = VECTOR_PRIOR / len(logits) if vector else 0.0

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        scale, bias = (params[:classes], params[classes:]) if vector else (params[0], 0.0)
        z = logits * scale + bias
        log_q = z - special.logsumexp(z, axis=1, keepdims=True)
        residual = (np.exp(log_q) - soft) / len(z)  # d(mean NLL)/dz
        value = float(-np.sum(soft * log_q) / len(z)) + 0.5 * prior * float(np.sum((params - start) ** 2))
        if vector:
            gradient = np.concatenate([(residual * logits).sum(0), residual.sum(0)])
            return value, gradient + prior * (params - start)
        return value, np.array([float(np.sum(residual * logits))])

    result = optimize.minimize(
        objective, start, jac=True, method="L-BFGS-B", options={"gtol": GTOL, "ftol": 0.0, "maxiter": 10000}
    )
    if not result.success and np.max(np.abs(result.jac)) > 1e3 * GTOL:
        log.warning("Calibration (%s): L-BFGS stopped early: %s", method, result.message)
    params = result.x
    if vector:
        return Scaling(
            "vector",
            scale=tuple(float(v) for v in params[:classes]),
            bias=tuple(float(v) for v in params[classes:]),
        )
    if prior_rows == 0 and np.all(logits.argmax(1) == targets):
        log.info(
            "Temperature scaling: every one of the %d rows is ranked right, so the likelihood "
            "asks for an ever sharper temperature (fitted: %.3g); it may not hold on new rows.",
            len(targets),
            1.0 / params[0],
        )
    if params[0] <= 0:
        # A non-positive scale ranks the classes backwards: the probabilities carry no signal
        # a temperature can calibrate.
        raise ValueError(
            f"Temperature scaling found no positive temperature (scale {params[0]:.3g}): the "
            "probabilities rank the true class no better than chance on these rows."
        )
    return Scaling("temperature", temperature=float(1.0 / params[0]))


def fit_weights_and_temperature(
    P: Any, labels: Any, *, start: np.ndarray | None = None, prior_rows: float = PRIOR_ROWS
) -> tuple[np.ndarray, Scaling]:
    """Member weights and one temperature fitted jointly: a calibrated weighted mean,
    `softmax(log(sum_j w_j p_j) / T)`, minimising the NLL of `labels`.

    The weights' scale cancels in the softmax, so L-BFGS-B runs on non-negative weights and
    the scale `1 / T`, from `start` (default uniform) and the temperature that fits it. The
    problem is not convex jointly: the result is never worse on these rows than `start` with
    its own temperature, which is kept should the solver end higher.

    Args:
        P: level-one predictions `(rows, members, classes)`.
        labels: `(rows,)` integer labels.
        start: starting weights (e.g. `optimal_weights`), or None for uniform.
        prior_rows: the pseudo-rows of `fit_scaling`, here too.

    Returns:
        The weights (non-negative, summing to 1) and the temperature.
    """
    predictions = np.asarray(P, dtype="float64")
    rows, members, classes = predictions.shape
    targets = checked_labels(np.asarray(labels), classes)
    soft = smoothed_targets(targets, classes, prior_rows)
    weights = np.full(members, 1.0 / members) if start is None else np.asarray(start, dtype="float64")
    first = fit_scaling(np.einsum("rmc,m->rc", predictions, weights), targets, prior_rows=prior_rows)

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, s = params[:members], params[members]
        mixture = np.einsum("rmc,m->rc", predictions, w)
        inside = mixture > LOG_EPSILON * w.sum()  # where the graph's clip leaves log(p) alone
        log_mixture = np.log(np.maximum(mixture, LOG_EPSILON * w.sum()))
        z = s * log_mixture
        log_q = z - special.logsumexp(z, axis=1, keepdims=True)
        residual = (np.exp(log_q) - soft) / rows  # d(mean NLL)/dz
        value = float(-np.sum(soft * log_q) / rows)
        slope = np.where(inside, residual * s / np.maximum(mixture, 1e-300), 0.0)
        # Where the clip binds, log(1e-7 * sum(w)) still moves with every weight, by 1 / sum(w).
        clipped = float(np.sum(np.where(inside, 0.0, residual * s))) / w.sum()
        return value, np.concatenate(
            [np.einsum("rc,rmc->m", slope, predictions) + clipped, [float(np.sum(residual * log_mixture))]]
        )

    begin = np.concatenate([weights, [1.0 / first.temperature]])
    result = optimize.minimize(
        objective,
        begin,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * members + [(1e-6, None)],
        options={"gtol": GTOL, "ftol": 0.0, "maxiter": 10000},
    )
    params = result.x if result.fun <= objective(begin)[0] and result.x[:members].sum() > 0 else begin
    fitted = params[:members] / params[:members].sum()
    return fitted, Scaling("temperature", temperature=float(1.0 / params[members]))
