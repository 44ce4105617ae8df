"""A sigmoid over k > 1 columns is k independent (multi-label) scores, not one distribution over
k classes: `build_ensemble` refuses it as a classifier, whether the task is given or inferred
(pointing to task='multilabel'), takes it as a bounded regressor under task='regression', and
as k label probabilities under task='multilabel': mean, hard and soft votes and per-label
weights combine each label on its own (checked against NumPy), with binary uncertainty outputs,
labels aligned by name, and every contradiction an error naming the member.
One sigmoid column stays a binary classifier (two class probabilities) outside multilabel."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import combiners
import ensemble


def _model(width: int, final: str | None, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation=final)])


X = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")

# (final activations of the members, task) -> the error; the multi-label member is "tags".
REFUSED = [
    (
        ["sigmoid"],
        "classification",
        r"'tags': under task='classification', its output \(batch, 3\) ends in a sigmoid over 3 "
        r"columns: 3 independent sigmoids are multi-label scores, not one distribution over "
        r"classes; their rows sum to [\d.]+ to [\d.]+ on probe rows, not 1\. .*softmax "
        r"\(Dense\(3, activation='softmax'\)\).*output='logits'; for multi-label scores, build "
        r"with task='multilabel'.*pass task='regression'",
    ),
    (
        ["sigmoid"],
        None,
        r"'tags': used as a classifier \(the task inferred from the members' class outputs\), its "
        r"output \(batch, 3\) ends in a sigmoid.*multi-label scores.*task='multilabel'",
    ),
    (["softmax", "sigmoid"], None, r"'tags': used as a classifier.*multi-label scores"),
    (["softmax", "sigmoid"], "classification", r"'tags': under task='classification'.*multi-label"),
]


@pytest.mark.parametrize(
    ("finals", "task", "match"), REFUSED, ids=[f"{'+'.join(f)}-{t}" for f, t, _ in REFUSED]
)
def test_independent_sigmoids_are_refused_as_a_classifier(finals, task, match):
    members = [
        ensemble.load_member(_model(3, final, seed), name="tags" if final == "sigmoid" else f"m{seed}")
        for seed, final in enumerate(finals)
    ]
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.build_ensemble(members, combiners.MeanCombiner(), task=task)


def test_independent_sigmoids_from_a_saved_model_are_refused_as_a_classifier(tmp_path):
    """A SavedModel shows no activation and declares no output: its rows, all in [0, 1] but not
    summing to one, are named for what they look like."""
    _model(3, "sigmoid").export(str(tmp_path / "tags"), verbose=False)
    member = ensemble.load_member(tmp_path / "tags", name="tags")
    match = r"'tags': under task='classification', its output \(batch, 3\) lies in \[0, 1\].*multi-label"
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.build_ensemble([member], combiners.MeanCombiner(), task="classification")


# (width, final activation, task) -> the task built and the prediction the source implies.
ACCEPTED = [
    (3, "sigmoid", "regression", "regression"),  # a bounded multi-target regressor
    (1, "sigmoid", None, "classification"),  # a binary classifier: [1 - p, p]
    (1, "sigmoid", "classification", "classification"),
    (3, "softmax", None, "classification"),
    (3, "softmax", "classification", "classification"),
]


@pytest.mark.parametrize(
    ("width", "final", "task", "built"), ACCEPTED, ids=[f"{w}-{f}-{t}" for w, f, t, _ in ACCEPTED]
)
def test_legitimate_sigmoid_and_softmax_members_build(width, final, task, built):
    source = _model(width, final)
    member = ensemble.load_member(source, name="member")
    model = ensemble.build_ensemble([member], combiners.MeanCombiner(), task=task)
    assert ensemble.ensemble_task(model) == built
    expected = np.asarray(source(X))
    if built == "classification" and width == 1:
        expected = np.hstack([1 - expected, expected])
    prediction = np.asarray(model(X)["prediction"])
    np.testing.assert_allclose(prediction, expected, atol=1e-6)
    if built == "classification":
        np.testing.assert_allclose(prediction.sum(-1), 1.0, atol=1e-5)


# Multi-label ensembles: three members of four labels, outputs checked against NumPy.

LABELS = 4
XM = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")


def _tagger(seed: int, final: str | None = "sigmoid", width: int = LABELS) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation=final)])


@pytest.fixture(scope="module")
def taggers() -> list[keras.Model]:
    return [_tagger(seed) for seed in range(3)]


def _built(taggers, combiner, **options):
    members = [ensemble.load_member(m, name=f"m{i}") for i, m in enumerate(taggers)]
    return ensemble.build_ensemble(members, combiner, task="multilabel", **options)


def _binary_entropy(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def _weighted(values, table):
    """NumPy: the weighted mean over members of (rows, members, labels), weights (members, labels)."""
    table = np.asarray(table, dtype="float64") / np.sum(table, axis=0)
    return np.einsum("rml,ml->rl", values, table)


TABLE = [[1.0, 0.0, 2.0, 1.0], [1.0, 3.0, 0.0, 1.0], [0.0, 1.0, 2.0, 2.0]]
COMBINED = [
    ("mean", lambda: combiners.MeanCombiner(), lambda p: p.mean(1)),
    (
        "mean-weights",
        lambda: combiners.MeanCombiner([1.0, 2.0, 5.0]),
        lambda p: _weighted(p, [[1], [2], [5]]),
    ),
    ("mean-per-label", lambda: combiners.MeanCombiner(TABLE), lambda p: _weighted(p, TABLE)),
    (
        "soft",
        lambda: combiners.VoteCombiner("soft", [1.0, 2.0, 5.0]),
        lambda p: _weighted(p, [[1], [2], [5]]),
    ),
    ("hard", lambda: combiners.VoteCombiner("hard"), lambda p: (p >= 0.5).mean(1)),
    (
        "hard-weights",
        lambda: combiners.VoteCombiner("hard", [1, 2, 5]),
        lambda p: _weighted(p >= 0.5, [[1], [2], [5]]),
    ),
]


@pytest.mark.parametrize(("combiner", "reference"), [c[1:] for c in COMBINED], ids=[c[0] for c in COMBINED])
def test_multilabel_combiners_match_numpy_per_label(taggers, combiner, reference):
    model = _built(taggers, combiner())
    assert ensemble.ensemble_task(model) == "multilabel"
    out = {k: np.asarray(v, dtype="float64") for k, v in model(XM).items()}
    members = np.stack([np.asarray(m(XM)) for m in taggers], axis=1).astype("float64")
    np.testing.assert_allclose(out["member_predictions"], members, atol=1e-6)
    np.testing.assert_allclose(out["prediction"], reference(members), atol=1e-6)
    assert out["prediction"].shape == (len(XM), LABELS)
    # Uncertainty: means over labels of binary scores, the members weighed as the combiner does.
    table = getattr(model.get_layer("uncertainty"), "member_weights", None)
    table = (
        np.ones((3, LABELS)) if table is None else np.broadcast_to(np.reshape(table, (3, -1)), (3, LABELS))
    )
    mixture = _weighted(members, table)
    information = _binary_entropy(mixture) - _weighted(_binary_entropy(members), table)
    differs = (members >= 0.5) != (out["prediction"] >= 0.5)[:, None, :]
    np.testing.assert_allclose(out["entropy"], _binary_entropy(out["prediction"]).mean(-1), atol=1e-5)
    np.testing.assert_allclose(out["mutual_information"], np.maximum(information, 0).mean(-1), atol=1e-5)
    np.testing.assert_allclose(out["disagreement"], _weighted(differs, table).mean(-1), atol=1e-6)


def test_a_hard_vote_tie_goes_to_the_label():
    """Two members, one for and one against each label: the share is exactly 0.5, which the 0.5
    threshold reads as the label present (a member's own 0.5 votes for it)."""
    keras.utils.set_random_seed(0)
    scores = [[0.9, 0.5, 0.2], [0.1, 0.49, 0.7]]
    members = []
    for i, row in enumerate(scores):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
        logits = np.log(np.asarray(row) / (1 - np.asarray(row)))
        model.layers[0].set_weights([np.zeros((4, 3)), logits])
        members.append(ensemble.load_member(model, name=f"v{i}"))
    model = ensemble.build_ensemble(members, combiners.VoteCombiner("hard"), task="multilabel")
    np.testing.assert_array_equal(np.asarray(model(XM[:2])["prediction"]), [[0.5, 0.5, 0.5]] * 2)
    assert (np.asarray(model(XM[:2])["prediction"]) >= 0.5).all()


def test_logits_take_a_sigmoid_each_and_one_column_stays_one_label():
    logits = _tagger(7, final=None)
    member = ensemble.load_member(logits, name="logits", output="logits")
    model = ensemble.build_ensemble([member], combiners.MeanCombiner(), task="multilabel")
    expected = 1 / (1 + np.exp(-np.asarray(logits(XM), dtype="float64")))
    np.testing.assert_allclose(np.asarray(model(XM)["prediction"]), expected, atol=1e-6)
    single = ensemble.load_member(_tagger(8, width=1), name="single")
    one = ensemble.build_ensemble([single], combiners.MeanCombiner(), task="multilabel")
    assert tuple(one(XM)["prediction"].shape) == (len(XM), 1)
    assert member.multilabel is False  # the caller's member is left as it was


def test_members_are_aligned_by_label(taggers):
    order = ["cat", "dog", "owl", "bee"]
    permuted = [1, 3, 0, 2]  # the second run's column j is label order[permuted[j]]
    second = ensemble.load_member(taggers[1], name="b", classes=[order[j] for j in permuted])
    first = ensemble.load_member(taggers[0], name="a", classes=order)
    model = ensemble.build_ensemble([first, second], combiners.MeanCombiner(), task="multilabel")
    aligned = np.asarray(taggers[1](XM))[:, np.argsort(permuted)]
    expected = (np.asarray(taggers[0](XM)) + aligned) / 2
    np.testing.assert_allclose(np.asarray(model(XM)["prediction"]), expected, atol=1e-6)
    assert ensemble.ensemble_members(model)[0].classes == tuple(order)


MULTILABEL_REFUSED = [
    (
        "softmax",
        lambda: [ensemble.load_member(_tagger(0, "softmax"), name="dist")],
        combiners.MeanCombiner,
        r"'dist': under task='multilabel', but its model ends in a softmax over 4 columns: one distribution",
    ),
    (
        "out-of-range",
        lambda: [ensemble.load_member(_tagger(0, None), name="raw")],
        combiners.MeanCombiner,
        r"'raw': under task='multilabel' its predictions must be independent probabilities in \[0, 1\].*"
        r"output='logits'",
    ),
    (
        "widths",
        lambda: [
            ensemble.load_member(_tagger(0), name="four"),
            ensemble.load_member(_tagger(1, width=3), name="three"),
        ],
        combiners.MeanCombiner,
        r"differ in width: \{'four': 4, 'three': 3\}",
    ),
    (
        "stacking",
        lambda: [ensemble.load_member(_tagger(0), name="a")],
        combiners.StackingCombiner,
        r"cannot combine a multilabel task: it supports classification and regression only",
    ),
    (
        "table-shape",
        lambda: [ensemble.load_member(_tagger(0), name="a")],
        lambda: combiners.MeanCombiner([[1.0, 1.0]]),
        r"per-label weights of shape \(members, labels\) = \(1, 4\)",
    ),
]


@pytest.mark.parametrize(
    ("members", "combiner", "match"),
    [c[1:] for c in MULTILABEL_REFUSED],
    ids=[c[0] for c in MULTILABEL_REFUSED],
)
def test_multilabel_refusals_name_the_member(members, combiner, match):
    with pytest.raises((ensemble.EnsembleError, ValueError), match=match):
        ensemble.build_ensemble(members(), combiner(), task="multilabel")


def test_per_label_weights_need_a_multilabel_task_and_conformal_is_refused(taggers):
    softmax = [ensemble.load_member(_tagger(i, "softmax"), name=f"s{i}") for i in range(3)]
    with pytest.raises(
        ValueError, match=r"Per-label weights .* need task='multilabel'. Received: a classification"
    ):
        ensemble.build_ensemble(softmax, combiners.MeanCombiner(TABLE), task="classification")
    model = _built(taggers, combiners.MeanCombiner())
    with pytest.raises(ensemble.EnsembleError, match=r"add_conformal .* multilabel ensemble"):
        ensemble.add_conformal(model, XM, (XM[:, :LABELS] > 0).astype(int))


def test_per_label_weights_round_trip_through_config():
    layer = combiners.MeanCombiner(np.asarray(TABLE))
    again = combiners.MeanCombiner.from_config(layer.get_config())
    assert again.label_weights == TABLE and again.member_weights is None
