"""Learned MeanCombiner weights: hand-worked ensemble selection, optimal weights, errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from combiners import MeanCombiner
from ensemble.fitting import ensemble_selection, optimal_weights


def nll(y: np.ndarray, probabilities: np.ndarray) -> float:
    """NumPy reference: mean -log of the true class probability, clipped at 1e-15."""
    true_class = probabilities[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(true_class, 1e-15, 1.0))))


def mse(y: np.ndarray, prediction: np.ndarray) -> float:
    return float(np.mean((prediction - y.reshape(prediction.shape)) ** 2))


def weighted(P: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.einsum("rmk,m->rk", P, weights)


def binary_members(true_class: list[list[float]], labels: list[int]) -> np.ndarray:
    """`(rows, members, 2)` probabilities from each member's true-class probability per row."""
    q = np.asarray(true_class, dtype="float64").T  # (rows, members)
    p = np.empty((*q.shape, 2))
    rows = np.arange(len(labels))
    p[rows, :, labels] = q
    p[rows, :, 1 - np.asarray(labels)] = 1.0 - q
    return p


def noisy_softmax_members(
    seed: int, noise: list[float], rows: int = 400, classes: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Members = softmax(3 * one_hot(y) + noise * N(0, 1)): more noise, worse member."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    logits = 3.0 * np.eye(classes)[y][:, None, :] + np.asarray(noise)[None, :, None] * rng.normal(
        size=(rows, len(noise), classes)
    )
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), y


def true_class_max_members(
    seed: int, members: int, rows: int = 200, classes: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Random probabilities whose largest entry is always the true class (so it is >= 1/classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    p = rng.dirichlet(np.ones(classes), size=(rows, members))
    top = p.argmax(-1)
    r = np.arange(rows)[:, None]
    m = np.arange(members)[None, :]
    p[r, m, top], p[r, m, y[:, None]] = p[r, m, y[:, None]], p[r, m, top]
    return p, y


# Hand-worked ensemble selection. Labels [0, 0, 1, 1]; each member's
# probability of the true class per row:
#   member 0: [.9, .9, .9, .3]  NLL = (3 * .1054 + 1.2040) / 4 = .3800
#   member 1: [.6, .6, .6, .9]  NLL = (3 * .5108 + .1054) / 4 = .4095
#   member 2: [.5, .5, .5, .5]  NLL = .6931
# Round 1 (init_best=1): member 0, the best single member.
# Round 2: bag {0,0} .3800; {0,1} = [.75,.75,.75,.6] .3435; {0,2} .4966 -> add 1.
# Round 3: {0,0,1} = [.8,.8,.8,.5] .3406; {0,1,1} = [.7]*4 .3567;
#          {0,1,2} .4461 -> add 0. Every round improved: keep all 3.
HAND_LABELS = np.array([0, 0, 1, 1])
HAND_P = binary_members([[0.9, 0.9, 0.9, 0.3], [0.6, 0.6, 0.6, 0.9], [0.5, 0.5, 0.5, 0.5]], [0, 0, 1, 1])

# Ties. Labels [0, 1]; true-class probabilities:
#   member 0: [.5, .5]  NLL .6931
#   member 1: [.9, .6]  NLL (.1054 + .5108) / 2 = .3081
#   member 2: [.6, .9]  NLL .3081, a tie with member 1: member 1 starts.
# Round 2: {1,1} .3081; {1,2} = [.75, .75] .2877 -> add 2; {1,0} .4435.
# Round 3: {1,2,1} = [.8, .7] and {1,2,2} = [.7, .8] tie at .2899 -> add 1;
#          .2899 > .2877, so the bag of 2 is kept.
TIE_LABELS = np.array([0, 1])
TIE_P = binary_members([[0.5, 0.5], [0.9, 0.6], [0.6, 0.9]], [0, 1])


@pytest.mark.parametrize(
    "P, y, rounds, init_best, expected",
    [
        (HAND_P, HAND_LABELS, 1, 1, [1.0, 0.0, 0.0]),
        (HAND_P, HAND_LABELS, 2, 1, [0.5, 0.5, 0.0]),
        (HAND_P, HAND_LABELS, 3, 1, [2 / 3, 1 / 3, 0.0]),
        # The two best singles (0 and 1) start; round 3 then adds 0 as above.
        (HAND_P, HAND_LABELS, 3, 2, [2 / 3, 1 / 3, 0.0]),
        (TIE_P, TIE_LABELS, 1, 1, [0.0, 1.0, 0.0]),
        (TIE_P, TIE_LABELS, 2, 1, [0.0, 0.5, 0.5]),
        (TIE_P, TIE_LABELS, 3, 1, [0.0, 0.5, 0.5]),
        # Identical members tie in every round: only the first is ever added.
        (np.repeat(HAND_P[:, :1], 3, axis=1), HAND_LABELS, 5, 1, [1.0, 0.0, 0.0]),
    ],
    ids=[
        "hand-round-1",
        "hand-round-2",
        "hand-round-3",
        "hand-init-best-2",
        "tie-to-lowest-index",
        "tie-then-complement",
        "tie-worse-round-trimmed",
        "identical-members",
    ],
)
def test_ensemble_selection_hand_worked(
    P: np.ndarray, y: np.ndarray, rounds: int, init_best: int, expected: list[float]
) -> None:
    weights = ensemble_selection(P, y, rounds=rounds, init_best=init_best)
    assert weights.dtype == np.float64
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-12)


def test_ensemble_selection_drops_a_useless_member() -> None:
    good, y = true_class_max_members(seed=3, members=2)
    useless = np.full((len(y), 1, 3), 1 / 3)
    P = np.concatenate([useless, good], axis=1)
    weights = ensemble_selection(P, y, rounds=20)
    # The good members never give the true class less than 1/3, so mixing in
    # uniform probabilities only lowers it.
    assert weights[0] == 0.0
    assert weights.sum() == pytest.approx(1.0)
    best_single = min(nll(y, P[:, m]) for m in range(3))
    assert nll(y, weighted(P, weights)) <= best_single


def test_ensemble_selection_regression_prefers_the_accurate_member() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=300)
    P = np.stack([y + 0.1 * rng.normal(size=300), y + 1.0 * rng.normal(size=300)], axis=1)[..., None]
    weights = ensemble_selection(P, y, task="regression", rounds=30)
    assert weights[0] > weights[1]
    assert mse(y, weighted(P, weights)) <= min(mse(y, P[:, m]) for m in range(2))


def test_ensemble_selection_minimises_a_custom_metric() -> None:
    # Minimising -NLL seeks the worst member: member 2 of the hand-worked case.
    def negative_nll(y: np.ndarray, p: np.ndarray) -> float:
        return -nll(y, p)

    weights = ensemble_selection(HAND_P, HAND_LABELS, rounds=5, metric=negative_nll)
    np.testing.assert_array_equal(weights, [0.0, 0.0, 1.0])


def test_ensemble_selection_is_pure() -> None:
    P, y = noisy_softmax_members(seed=5, noise=[1.0, 2.0, 4.0])
    before = P.copy()
    first = ensemble_selection(P, y, rounds=10)
    np.testing.assert_array_equal(ensemble_selection(P, y, rounds=10), first)
    np.testing.assert_array_equal(P, before)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed-0", "seed-1", "seed-2"])
def test_optimal_weights_beat_uniform_and_every_member(seed: int) -> None:
    P, y = noisy_softmax_members(seed, noise=[1.5, 3.0, 6.0, 10.0])
    weights = optimal_weights(P, y)
    assert weights.dtype == np.float64
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-8)
    fitted = nll(y, weighted(P, weights))
    assert fitted <= nll(y, P.mean(axis=1)) + 1e-12
    for m in range(P.shape[1]):
        assert fitted <= nll(y, P[:, m]) + 1e-12
    # Greedy selection on a 50-bag grid cannot beat the continuous optimum.
    assert fitted <= nll(y, weighted(P, ensemble_selection(P, y))) + 1e-9


def test_optimal_weights_find_the_perfect_member() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 200)
    random_members = rng.dirichlet(np.ones(3), size=(200, 3))
    perfect = np.eye(3)[y][:, None, :]
    P = np.concatenate([random_members[:, :1], perfect, random_members[:, 1:]], axis=1)
    weights = optimal_weights(P, y)
    assert weights[1] > 0.9


@pytest.mark.parametrize("width", [1, 3], ids=["one-target", "three-targets"])
def test_optimal_weights_regression_prefers_the_accurate_member(width: int) -> None:
    rng = np.random.default_rng(7)
    y = rng.normal(size=(300, width))
    P = np.stack([y + 0.1 * rng.normal(size=y.shape), y + 1.0 * rng.normal(size=y.shape)], axis=1)
    weights = optimal_weights(P, y[:, 0] if width == 1 else y, task="regression")
    assert weights[0] > weights[1]
    assert mse(y, weighted(P, weights)) <= min(mse(y, P[:, m]) for m in range(2))


@pytest.mark.parametrize("s1, s2", [(0.5, 1.0), (1.0, 1.0), (2.0, 1.0)], ids=["0.5-1", "equal", "2-1"])
def test_optimal_weights_match_inverse_variance_weighting(s1: float, s2: float) -> None:
    # Unbiased members with independent noise: the MSE-optimal convex weight
    # on member 0 is s2^2 / (s1^2 + s2^2).
    rng = np.random.default_rng(8)
    y = rng.normal(size=20_000)
    P = np.stack([y + s1 * rng.normal(size=y.shape), y + s2 * rng.normal(size=y.shape)], axis=1)
    weights = optimal_weights(P[..., None], y, task="regression")
    assert weights[0] == pytest.approx(s2**2 / (s1**2 + s2**2), abs=0.02)


def test_a_single_member_gets_all_the_weight() -> None:
    P, y = noisy_softmax_members(seed=9, noise=[2.0])
    np.testing.assert_array_equal(optimal_weights(P, y), [1.0])
    np.testing.assert_array_equal(ensemble_selection(P, y), [1.0])


@pytest.mark.parametrize("learn", [ensemble_selection, optimal_weights], ids=["selection", "optimal"])
def test_weights_feed_a_mean_combiner(learn: Callable[..., np.ndarray]) -> None:
    P, y = noisy_softmax_members(seed=10, noise=[1.0, 3.0, 5.0])
    weights = list(learn(P, y))
    combiner = MeanCombiner(weights=weights, task="classification")
    assert combiner.get_config()["weights"] == weights
    assert all(type(w) is float for w in combiner.get_config()["weights"])
    output = np.asarray(combiner(P.astype("float32")))
    np.testing.assert_allclose(output, weighted(P, np.asarray(weights)), atol=1e-5)


P3 = np.full((4, 2, 3), 1 / 3)
LABELS = np.array([0, 1, 2, 0])


@pytest.mark.parametrize(
    "P, y, kwargs, match",
    [
        (P3[0], LABELS, {}, r"shape \(rows, members, width\).*P.shape=\(2, 3\)"),
        (P3[:0], LABELS[:0], {}, r"at least one row.*P.shape=\(0, 2, 3\)"),
        (P3, LABELS[:3], {}, r"one entry per row of P \(4 rows\).*y.shape=\(3,\)"),
        (P3, np.array([0, 1, 3, 0]), {}, r"labels in \[0, 3\).*from 0 to 3"),
        (P3, np.array([0, -1, 2, 0]), {}, r"labels in \[0, 3\).*from -1 to 2"),
        (P3, np.array([0.0, 1.5, 2.0, 0.0]), {}, r"integer class labels.*float64"),
        (P3, np.eye(3)[LABELS], {}, r"integer class labels.*shape \(4, 3\)"),
        (P3, np.zeros((4, 2)), {"task": "regression"}, r"shape \(rows, 3\).*y.shape=\(4, 2\)"),
        (P3, np.zeros(4), {"task": "regression"}, r"shape \(rows, 3\).*y.shape=\(4,\)"),
        (P3, LABELS, {"task": "ranking"}, r"one of \('classification', 'regression'\).*'ranking'"),
        (np.full((4, 2, 3), np.nan), LABELS, {}, r"finite level-one predictions"),
    ],
    ids=[
        "P-not-3d",
        "P-empty",
        "y-length",
        "label-too-large",
        "label-negative",
        "label-not-integer",
        "labels-one-hot",
        "regression-width",
        "regression-1d-for-width-3",
        "unknown-task",
        "P-nan",
    ],
)
@pytest.mark.parametrize("learn", [ensemble_selection, optimal_weights], ids=["selection", "optimal"])
def test_invalid_inputs(
    learn: Callable[..., np.ndarray], P: np.ndarray, y: np.ndarray, kwargs: dict[str, str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        learn(P, y, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rounds": 0}, r"rounds to be an integer >= 1.*rounds=0"),
        ({"rounds": 2.5}, r"rounds to be an integer >= 1.*rounds=2.5"),
        ({"init_best": 0}, r"init_best to be an integer >= 1.*init_best=0"),
        ({"init_best": 3}, r"at most the number of members \(2\).*init_best=3"),
        ({"rounds": 1, "init_best": 2}, r"at most rounds \(1\).*init_best=2"),
        ({"rounds": 2, "init_best": 2, "metric": lambda y, p: np.nan}, r"finite value"),
    ],
    ids=[
        "rounds-0",
        "rounds-float",
        "init-best-0",
        "init-best-too-many",
        "init-best-over-rounds",
        "metric-never-finite",
    ],
)
def test_invalid_selection_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ensemble_selection(P3, LABELS, **kwargs)  # type: ignore[arg-type]


def test_metric_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"callable \(y, prediction\) -> float.*metric='nll'"):
        ensemble_selection(P3, LABELS, metric="nll")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "labels",
    [HAND_LABELS.astype("int32"), HAND_LABELS.astype("float32"), HAND_LABELS.tolist()],
    ids=["int32", "integral-floats", "list"],
)
def test_labels_in_any_integral_form(labels: object) -> None:
    np.testing.assert_allclose(ensemble_selection(HAND_P, labels, rounds=3), [2 / 3, 1 / 3, 0.0])
