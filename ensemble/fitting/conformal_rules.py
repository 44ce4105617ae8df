"""The split-conformal threshold (`conformal_quantile`), and the choice of a conformal set's rule
on a seeded share of the calibration rows (the tuning rows): RAPS's `k_reg` and `lambda_reg` as Angelopoulos et al. (2021) pick them (`k_reg` the
`1 - alpha` quantile of the label's rank, `lambda_reg` the value of a grid with the smallest mean
set size), and for `method="auto"` the rule among THR, randomised APS and RAPS with the smallest
mean set size at the target coverage. The threshold is then computed on the other rows alone:
the choice never sees them, so the coverage guarantee holds as for a rule fixed in advance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np

from ensemble.errors import EnsembleError
from ensemble.graph.conformal import ConformalSet, class_scores, class_sets

__all__ = [
    "LAMBDA_GRID",
    "TUNING_SHARE",
    "SetRule",
    "calibrated_set",
    "check_rule",
    "check_share",
    "choose_rule",
    "conformal_quantile",
    "minimum_rows",
    "rows_needed",
    "rules_to_try",
    "tuning_split",
]

LAMBDA_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 0.2, 0.5)  # the paper's `pick_lamda_size`
TUNING_SHARE = 0.3  # the paper's `pct_paramtune`


def _rank(rows: int, alpha: float) -> int:
    """`ceil((n + 1)(1 - alpha))`, the rank of the finite-sample quantile; rounded to 9 decimals
    first so that float noise (10 * 0.9 = 9.000000000000002) does not add one."""
    return math.ceil(round((rows + 1) * (1.0 - alpha), 9))


def minimum_rows(alpha: float) -> int:
    """The fewest calibration rows for which `alpha` gives a finite threshold (rank <= rows)."""
    rows = max(1, math.floor((1.0 - alpha) / alpha) - 1)
    while _rank(rows, alpha) > rows:
        rows += 1
    return rows


def conformal_quantile(scores: Any, alpha: float) -> np.ndarray:
    """The `ceil((n + 1)(1 - alpha))`-th smallest of `n` scores along the first axis (a float32
    array, one value per column for 2-D scores): the split-conformal threshold."""
    values = np.sort(np.asarray(scores, dtype="float32"), axis=0)
    rows = len(values)
    rank = _rank(rows, alpha)
    if rank > rows:
        raise EnsembleError(
            f"alpha={alpha:g} needs at least {minimum_rows(alpha)} calibration rows (the "
            f"ceil((n+1)(1-alpha))-th smallest score must exist). Received: {rows} rows. Give more "
            "held-out rows or a larger alpha."
        )
    result: np.ndarray = values[rank - 1]
    return result


@dataclass(frozen=True)
class SetRule:
    """One way to build sets: the `ConformalSet` arguments other than the threshold."""

    method: str
    randomized: bool = False
    k_reg: int = 0
    lambda_reg: float = 0.0

    def scores(self, probabilities: np.ndarray, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The label's score on each row; `noise` is used only by a randomised rule."""
        return np.asarray(
            keras.ops.convert_to_numpy(class_scores(**self._call(probabilities, noise), labels=labels))
        )

    def sets(self, probabilities: np.ndarray, threshold: float, noise: np.ndarray) -> np.ndarray:
        return np.asarray(
            keras.ops.convert_to_numpy(class_sets(**self._call(probabilities, noise), threshold=threshold))
        )

    def _call(self, probabilities: np.ndarray, noise: np.ndarray) -> dict[str, Any]:
        """The arguments `class_scores` and `class_sets` share for this rule."""
        return {
            "method": self.method,
            "probabilities": probabilities,
            "noise": noise if self.randomized else None,
            "k_reg": self.k_reg,
            "lambda_reg": self.lambda_reg,
        }

    def record(self) -> dict[str, Any]:
        return asdict(self)


def tuning_split(rows: int, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices `(tune, calibrate)`: a seeded `share` of `rows` and the rest, each sorted."""
    order = rng.permutation(rows)
    cut = round(share * rows)
    return np.sort(order[:cut]), np.sort(order[cut:])


def label_rank_quantile(probabilities: np.ndarray, labels: np.ndarray, alpha: float) -> int:
    """The paper's `k*`: the `1 - alpha` quantile ("higher") of the label's 1-based rank, the
    smallest `k` whose top-`k` sets would cover `1 - alpha` of these rows."""
    order = np.argsort(-probabilities, axis=1, kind="stable")  # ties: the lower class first
    ranks = np.argmax(order == np.reshape(labels, (-1, 1)), axis=1) + 1
    return int(np.quantile(ranks, 1.0 - alpha, method="higher"))


def rules_to_try(
    method: str,
    randomized: bool,
    k_reg: int | None,
    lambda_reg: float | None,
    probabilities: np.ndarray,
    labels: np.ndarray,
    alpha: float,
) -> list[SetRule]:
    """The candidate rules for `method` ("auto" or "raps"), RAPS's unknown parameters found on
    the tuning rows `(probabilities, labels)`."""
    k = label_rank_quantile(probabilities, labels, alpha) if k_reg is None else k_reg
    lambdas = LAMBDA_GRID if lambda_reg is None else (lambda_reg,)
    raps = [SetRule("raps", randomized, k, value) for value in lambdas]
    if method == "raps":
        return raps
    return [SetRule("thr"), SetRule("aps", randomized), *raps]


def choose_rule(
    rules: list[SetRule],
    probabilities: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[SetRule, list[dict[str, Any]]]:
    """The rule with the smallest mean set size on the tuning rows at their own threshold (ties
    to the earlier rule: THR first, the one whose sets do not change between calls), and each
    rule's record with its `threshold` and `mean_set_size` there. One draw of the scores'
    noise and one of the sets' are shared by every rule, so they are compared on equal terms."""
    rows = len(labels)
    score_noise = rng.random(rows).astype("float32")
    set_noise = rng.random(rows).astype("float32")
    tried: list[dict[str, Any]] = []
    for rule in rules:
        threshold = float(conformal_quantile(rule.scores(probabilities, labels, score_noise), alpha))
        size = float(rule.sets(probabilities, threshold, set_noise).sum(axis=1).mean())
        tried.append({**rule.record(), "threshold": threshold, "mean_set_size": size})
    best = min(range(len(rules)), key=lambda index: (tried[index]["mean_set_size"], index))
    return rules[best], tried


def rows_needed(share: float, minimum: int) -> int:
    """The fewest calibration rows whose tuning share and rest each hold `minimum` rows."""
    rows = max(2, math.ceil(minimum / max(min(share, 1 - share), 1e-9)) - 2)
    while round(share * rows) < minimum or rows - round(share * rows) < minimum:
        rows += 1
    return rows


def check_share(share: Any) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < float(share) < 1.0:
        raise EnsembleError(
            f"Expected tuning_share, the share of the calibration rows to choose the rule on, in "
            f"(0, 1). Received: tuning_share={share!r}"
        )
    return float(share)


def calibrated_set(
    probabilities: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    rule: SetRule | None,
    *,
    method: str,
    randomized: bool,
    k_reg: int | None,
    lambda_reg: float | None,
    share: float,
    seed: int,
    name: str,
) -> tuple[ConformalSet, float]:
    """The `ConformalSet` for `rule` (None: chosen on a tuning share of the rows, the threshold
    on the rest), and its mean set size on the rows its threshold was computed on. Every random
    draw comes from one generator seeded with `seed`, in a fixed order."""
    rng = np.random.default_rng(seed)
    selection = None
    calibrate = np.arange(len(labels))
    if rule is None:
        tune, calibrate = tuning_split(len(labels), share, rng)
        rules = rules_to_try(method, randomized, k_reg, lambda_reg, probabilities[tune], labels[tune], alpha)
        rule, tried = choose_rule(rules, probabilities[tune], labels[tune], alpha, rng)
        selection = {"requested": method, "tuning_rows": len(tune), "seed": seed, "tried": tried}
    p, y = probabilities[calibrate], labels[calibrate]
    noise = rng.random(len(y)).astype("float32")
    threshold = float(conformal_quantile(rule.scores(p, y, noise), alpha))
    layer = ConformalSet(
        rule.method,
        threshold,
        alpha,
        len(y),
        randomized=rule.randomized,
        k_reg=rule.k_reg,
        lambda_reg=rule.lambda_reg,
        seed=int(rng.integers(2**31 - 1)) if rule.randomized else None,
        selection=selection,
        name=name,
    )
    size = float(rule.sets(p, threshold, rng.random(len(y)).astype("float32")).sum(axis=1).mean())
    return layer, size


def check_rule(method: str, randomized: Any, k_reg: Any, lambda_reg: Any, classification: bool) -> bool:
    """`randomized` resolved (None: True for "raps", False for "auto" and "aps"), after checking the set
    options against the method."""
    given = {
        key: value
        for key, value in (("randomized", randomized), ("k_reg", k_reg), ("lambda_reg", lambda_reg))
        if value is not None
    }
    if not classification and given:
        raise EnsembleError(f"{sorted(given)} are options of conformal sets, not of {method!r} intervals.")
    if randomized is not None and not isinstance(randomized, (bool, np.bool_)):
        raise EnsembleError(f"Expected randomized to be True, False or None. Received: {randomized!r}")
    if method == "thr" and randomized:
        raise EnsembleError(
            "method='thr' has no randomised version (its score breaks no tie); drop randomized."
        )
    if (k_reg is not None or lambda_reg is not None) and method not in ("raps", "auto"):
        raise EnsembleError(
            f"k_reg and lambda_reg are RAPS's (method='raps' or 'auto'). Received method={method!r}."
        )
    if k_reg is not None and (
        isinstance(k_reg, bool) or not isinstance(k_reg, (int, np.integer)) or k_reg < 0
    ):
        raise EnsembleError(
            f"Expected k_reg, a whole number >= 0, or None to tune it. Received: k_reg={k_reg!r}"
        )
    if lambda_reg is not None and (
        isinstance(lambda_reg, bool)
        or not isinstance(lambda_reg, (int, float, np.floating))
        or not math.isfinite(lambda_reg)
        or lambda_reg < 0
    ):
        raise EnsembleError(
            f"Expected lambda_reg, a finite number >= 0, or None to tune it. Received: lambda_reg={lambda_reg!r}"
        )
    return bool(method == "raps" if randomized is None else randomized)
