"""Fitting and scoring a multilabel ensemble: weights learned per label on level-one rows (each
label's binary log loss), its y and level_one checked and named, the leakage guard as for any
fit, and the metrics (per-label binary log loss, Brier, ECE, subset accuracy, Hamming loss)
checked against scikit-learn's on the 0/1 matrices."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn import metrics
from sklearn.datasets import make_multilabel_classification
from sklearn.linear_model import LogisticRegression

import combiners
import ensemble

LABELS = 4


@pytest.fixture(scope="module")
def data():
    x, y = make_multilabel_classification(n_samples=300, n_features=8, n_classes=LABELS, random_state=0)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    return x, y.astype("int64")


def _tagger(kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(LABELS, activation="sigmoid")])
    model.layers[0].set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


@pytest.fixture(scope="module")
def members(data):
    """Three runs trained on rows 0-99 (one logistic regression per label, by scikit-learn):
    `good`; `blind0`, whose label-0 column is noise; `only0`, good on label 0 alone."""
    x, y = data
    fitted = [LogisticRegression(max_iter=1000).fit(x[:100], y[:100, j]) for j in range(LABELS)]
    kernel = np.stack([f.coef_[0] for f in fitted], axis=1)
    bias = np.array([f.intercept_[0] for f in fitted])
    noise = np.random.default_rng(0).normal(scale=2.0, size=kernel.shape)
    blind0, only0 = kernel.copy(), noise.copy()
    blind0[:, 0] = noise[:, 0]
    only0[:, 0] = kernel[:, 0]
    return {
        "good": _tagger(kernel, bias),
        "blind0": _tagger(blind0, bias),
        "only0": _tagger(only0, bias),
    }


def _ensemble(members, names=("blind0", "only0"), combiner=None):
    loaded = [ensemble.load_member(members[n], name=n) for n in names]
    return ensemble.build_ensemble(loaded, combiner or combiners.MeanCombiner(), task="multilabel")


def _nll(y, p):
    return np.mean([metrics.log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(y.shape[1])])


@pytest.mark.slow
def test_weights_per_label_favour_the_member_better_on_that_label(data, members):
    x, y = data
    model = _ensemble(members)
    plain = model.predict(x[200:], verbose=0)["prediction"]
    report = ensemble.fit(model, x[100:200], y[100:200], method="optimal")
    table = np.asarray(ensemble.ensemble_combiner(model).label_weights)
    assert table.shape == (2, LABELS)
    assert table[1, 0] > 0.9 and (table[0, 1:] > 0.75).all()  # only0 on label 0, blind0 elsewhere
    assert report.member_weights == {"blind0": table[0].tolist(), "only0": table[1].tolist()}
    outputs = model.predict(x[200:], verbose=0)
    fitted = outputs["prediction"]
    members_out = np.stack([np.asarray(members[n](x[200:])) for n in ("blind0", "only0")], axis=1)
    np.testing.assert_allclose(fitted, np.einsum("rml,ml->rl", members_out, table / table.sum(0)), atol=1e-6)
    assert _nll(y[200:], fitted) <= _nll(y[200:], plain)
    # The uncertainty outputs take the fitted weights: the members' weighted mixture is the prediction.
    p = np.clip(fitted, 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(
        outputs["entropy"], np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)), -1), atol=1e-5
    )
    again = ensemble.fit_mean_weights(model, x[100:200], y[100:200], method="optimal")
    np.testing.assert_allclose(again, table, atol=1e-9)  # a refit starts from the same state
    # method='none' after it: the combiner as built (the plain mean), not the learned table.
    ensemble.fit(model, x[100:200], y[100:200], method="none")
    after = model.predict(x[200:], verbose=0)
    np.testing.assert_allclose(after["prediction"], members_out.mean(1), atol=1e-6)
    q = np.clip(members_out.mean(1), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(
        after["entropy"], np.mean(-(q * np.log(q) + (1 - q) * np.log(1 - q)), -1), atol=1e-5
    )


def test_metrics_match_scikit_learn(data, members):
    x, y = data
    model = _ensemble(members, names=("good", "blind0", "only0"))
    report = ensemble.fit(model, x[100:200], y[100:200], method="selection", rounds=10)
    result = ensemble.evaluate_ensemble(model, x[200:], y[200:], fit_report=report)
    p = model.predict(x[200:], verbose=0)["prediction"].astype("float64")
    scores, hard = result["ensemble"], (p >= 0.5).astype(int)
    assert scores["subset_accuracy"] == pytest.approx(metrics.accuracy_score(y[200:], hard))
    assert scores["hamming_loss"] == pytest.approx(metrics.hamming_loss(y[200:], hard))
    for j in range(LABELS):
        assert scores[f"nll/{j}"] == pytest.approx(metrics.log_loss(y[200:, j], p[:, j], labels=[0, 1]))
        assert scores[f"brier/{j}"] == pytest.approx(metrics.brier_score_loss(y[200:, j], p[:, j]))
        # Binary ECE, 15 equal-width bins of the top-label confidence max(p, 1 - p).
        confidence = np.maximum(p[:, j], 1 - p[:, j])
        right = (p[:, j] >= 0.5) == (y[200:, j] == 1)
        bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
        ece = sum(
            (bins == b).mean() * abs(right[bins == b].mean() - confidence[bins == b].mean())
            for b in np.unique(bins)
        )
        assert scores[f"ece/{j}"] == pytest.approx(ece)
    for metric in ("nll", "brier", "ece"):
        assert scores[metric] == pytest.approx(np.mean([scores[f"{metric}/{j}"] for j in range(LABELS)]))
    assert result["baselines"]["selected_member"]["name"] == report.selected_member["name"] == "good"
    assert set(result["members"]) == {"good", "blind0", "only0"}


Y_REFUSED = [
    ("1-D", lambda y: y[:, 0], r"shape \(rows, labels\) = \(100, 4\).*Received: y of shape \(100,\)"),
    ("width", lambda y: y[:, :3], r"shape \(rows, labels\) = \(100, 4\).*\(100, 3\)"),
    (
        "value",
        lambda y: np.where(np.arange(100)[:, None] == 7, 2, y),
        r"0 and 1 only.*row 7 is \[2, 2, 2, 2\]",
    ),
    ("nan", lambda y: np.where(np.arange(100)[:, None] == 3, np.nan, y), r"0 and 1 only.*row 3 is \[nan"),
    ("rows", lambda y: y[:50], r"one target per row of x \(100\)"),
]


@pytest.mark.parametrize(("change", "match"), [c[1:] for c in Y_REFUSED], ids=[c[0] for c in Y_REFUSED])
def test_y_is_checked_naming_the_first_bad_row(data, members, change, match):
    x, y = data
    model = _ensemble(members)
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.fit(model, x[100:200], change(y[100:200]), method="optimal")


def test_given_level_one_and_refusals(data, members, tmp_path):
    x, y = data
    model = _ensemble(members)
    level_one = np.stack([np.asarray(members[n](x[100:200])) for n in ("blind0", "only0")], axis=1)
    logits = level_one.copy()
    logits[5, 1, 2] = 3.0
    with pytest.raises(ensemble.EnsembleError, match=r"level_one of member 'only0' \(member 1\).*row 5"):
        ensemble.fit(model, x[100:200], y[100:200], method="optimal", level_one=logits)
    report = ensemble.fit(model, x[100:200], y[100:200], method="optimal", level_one=level_one)
    assert report.regime == "given"
    with pytest.raises(ensemble.EnsembleError, match=r"calibration='temperature' .* multilabel"):
        ensemble.fit(model, x[100:200], y[100:200], calibration="temperature")
    voting = _ensemble(members, combiner=combiners.VoteCombiner("soft"))
    with pytest.raises(
        ensemble.EnsembleError, match=r"method='optimal' learns a MeanCombiner's weights per label"
    ):
        ensemble.fit(voting, x[100:200], y[100:200], method="optimal")
    # The leakage guard: rows a member trained on are refused, as for any fit.
    path = tmp_path / "good.keras"
    members["good"].save(path)
    ensemble.record_training_rows(path, x[:100])
    guarded = ensemble.build_ensemble(
        [ensemble.load_member(path, name="good"), ensemble.load_member(members["only0"], name="only0")],
        combiners.MeanCombiner(),
        task="multilabel",
    )
    with pytest.raises(ensemble.EnsembleError, match=r"good"):
        ensemble.fit(guarded, x[50:150], y[50:150], method="optimal")


@pytest.mark.slow
def test_a_fitted_multilabel_ensemble_exports_and_reloads_as_it_predicts(data, members, tmp_path):
    import tensorflow as tf

    x, y = data
    named = [ensemble.load_member(members[n], name=n, classes=list("wxyz")) for n in ("blind0", "only0")]
    model = ensemble.build_ensemble(named, combiners.MeanCombiner(), task="multilabel")
    ensemble.fit(model, x[100:200], y[100:200], method="optimal")
    path = ensemble.export_saved_model(model, tmp_path / "export")
    served = tf.saved_model.load(path).signatures["serving_default"]
    answer = {k: v.numpy() for k, v in served(**{model.input.name: tf.constant(x[200:205])}).items()}
    expected = model.predict(x[200:205], verbose=0)
    for key in ("prediction", "member_predictions", "entropy", "mutual_information", "disagreement"):
        np.testing.assert_allclose(answer[key], expected[key], atol=1e-6, err_msg=key)
    assert answer["classes"].astype(str).tolist() == [list("wxyz")] * 5
    model.save(tmp_path / "multilabel.keras")
    restored = keras.saving.load_model(tmp_path / "multilabel.keras")
    assert ensemble.ensemble_task(restored) == "multilabel"
    np.testing.assert_allclose(
        restored.predict(x[200:205], verbose=0)["prediction"], expected["prediction"], atol=1e-6
    )
    ort = pytest.importorskip("onnxruntime")  # the ONNX export, where its extra is installed
    session = ort.InferenceSession(str(ensemble.export_onnx(model, tmp_path / "multilabel.onnx")))
    names = [output.name for output in session.get_outputs()]
    onnx = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x[200:205]}), strict=True))
    np.testing.assert_allclose(onnx["prediction"], expected["prediction"], atol=1e-5)
