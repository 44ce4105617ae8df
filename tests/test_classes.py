"""Class labels: members whose runs encoded the labels in different orders combine class by
class, checked against scikit-learn's own `predict_proba` of each run reindexed in NumPy; the
labels survive saving, fusion and every export, the server returns them, labels given by name
fit and evaluate as their columns, and every contradiction is an error naming the labels."""

from __future__ import annotations

import json
import urllib.request

import keras
import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import combiners
import ensemble
from ensemble.errors import EnsembleError, MemberError
from ensemble.graph.member_outputs import with_fusion
from ensemble.graph.view import EnsembleView

NAMES = [str(name) for name in load_wine().target_names]  # class_0, class_1, class_2


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(x).astype("float32"), y.astype("int64")


def run(
    x: np.ndarray, y: np.ndarray, order: list[str], rows: slice
) -> tuple[keras.Model, LogisticRegression]:
    """What one training run saves: a softmax model whose column j is label `order[j]` (the
    run encoded the labels in that order), trained by scikit-learn, as one Dense layer."""
    encoded = np.array([order.index(NAMES[label]) for label in y[rows]])
    fitted = LogisticRegression(C=0.5, max_iter=2000).fit(x[rows], encoded)
    model = keras.Sequential(
        [keras.Input((x.shape[1],)), keras.layers.Dense(len(order), activation="softmax")]
    )
    model.set_weights([fitted.coef_.T.astype("float32"), fitted.intercept_.astype("float32")])
    return model, fitted


def by_label(fitted: LogisticRegression, x: np.ndarray, order: list[str], labels: list[str]) -> np.ndarray:
    """scikit-learn's probabilities of a run encoded in `order`, in the columns of `labels`."""
    return fitted.predict_proba(x)[:, [order.index(label) for label in labels]]


@pytest.fixture(scope="module")
def runs(wine):
    """Three runs on different rows: one in the file's order, one reversed, one rotated."""
    x, y = wine
    orders = [NAMES, NAMES[::-1], NAMES[1:] + NAMES[:1]]
    models = [run(x, y, order, slice(i, None, 3)) for i, order in enumerate(orders)]
    return orders, models


def members(runs, named: bool = True) -> list[ensemble.Member]:
    orders, models = runs
    return [
        ensemble.load_member(model, name=f"run{i}", classes=order if named else None)
        for i, (order, (model, _)) in enumerate(zip(orders, models, strict=True))
    ]


def test_members_in_other_label_orders_combine_class_by_class(wine, runs):
    x, y = wine
    orders, models = runs
    model = ensemble.build_ensemble(members(runs), combiners.MeanCombiner())
    out = model.predict(x, verbose=0)
    want = [by_label(fitted, x, order, NAMES) for order, (_, fitted) in zip(orders, models, strict=True)]
    np.testing.assert_allclose(out["member_predictions"], np.stack(want, axis=1), atol=1e-5)
    np.testing.assert_allclose(out["prediction"], np.mean(want, axis=0), atol=1e-5)
    assert EnsembleView.of(model).classes == tuple(NAMES)  # the first member's order
    assert (out["prediction"].argmax(-1) == y).mean() > 0.95
    # The same models with their columns unnamed are averaged position by position: what the
    # labels prevent (classes mixed, accuracy near a guess on these encodings).
    blind = ensemble.build_ensemble(members(runs, named=False), combiners.MeanCombiner())
    assert (blind.predict(x, verbose=0)["prediction"].argmax(-1) == y).mean() < 0.7


def test_build_ensemble_classes_sets_the_order_and_labels_fit_by_name(wine, runs):
    x, y = wine
    orders, models = runs
    order = [NAMES[2], NAMES[0], NAMES[1]]
    model = ensemble.build_ensemble(members(runs), combiners.StackingCombiner(), classes=order)
    view = EnsembleView.of(model)
    assert view.classes == tuple(order)
    first = view.members[0]
    np.testing.assert_allclose(
        first.predict(x, verbose=0), by_label(models[0][1], x, orders[0], order), atol=1e-5
    )
    # Labels given by name are the columns they name. Integers would be ambiguous here: no
    # member emits this order, so they are no member's encoding (a user's y in load_wine's own
    # 0..2 would score the wrong columns, 4.6 nats instead of 0.24), and are refused.
    names = np.array([NAMES[label] for label in y])
    fit_rows, test_rows = slice(0, None, 2), slice(1, None, 2)
    ensemble.fit(model, x[fit_rows], names[fit_rows], allow_overlap=True)
    by_name = model.predict(x, verbose=0)["prediction"]
    scored = ensemble.evaluate_ensemble(model, x[test_rows], names[test_rows])["ensemble"]
    expected = by_name[test_rows][np.arange(len(y[test_rows])), [order.index(n) for n in names[test_rows]]]
    np.testing.assert_allclose(scored["nll"], -np.mean(np.log(np.clip(expected, 1e-7, 1))), rtol=1e-4)
    refused = r"y: integer labels number the columns of the ensemble's classes .* an order no member emits"
    with pytest.raises(EnsembleError, match=refused):
        ensemble.fit(model, x[fit_rows], y[fit_rows], allow_overlap=True)
    with pytest.raises(EnsembleError, match=refused):
        ensemble.evaluate_ensemble(model, x[test_rows], y[test_rows])
    wrong = names[fit_rows].copy()
    wrong[4] = "class_9"
    with pytest.raises(EnsembleError, match=r"y, row 4: label 'class_9' is none of the ensemble's classes"):
        ensemble.fit(model, x[fit_rows], wrong, allow_overlap=True)


def test_unnamed_members_take_the_classes_build_ensemble_is_given(runs):
    model = ensemble.build_ensemble(members(runs, named=False)[:1], combiners.MeanCombiner(), classes=NAMES)
    assert EnsembleView.of(model).classes == tuple(NAMES)
    assert EnsembleView.of(model).members[0].columns is None


def test_labels_survive_saving_and_fusion(tmp_path, wine):
    x, y = wine
    # Two members of one architecture, the second encoded reversed: fusion must not mix them.
    orders = [NAMES, NAMES[::-1]]
    models = [run(x, y, order, slice(i, None, 2)) for i, order in enumerate(orders)]
    loaded = [
        ensemble.load_member(model, name=f"m{i}", classes=order)
        for i, (order, (model, _)) in enumerate(zip(orders, models, strict=True))
    ]
    model = ensemble.build_ensemble(loaded, combiners.MeanCombiner(), fuse=True)
    want = np.mean([by_label(f, x, o, NAMES) for o, (_, f) in zip(orders, models, strict=True)], axis=0)
    np.testing.assert_allclose(model.predict(x, verbose=0)["prediction"], want, atol=1e-5)
    np.testing.assert_allclose(with_fusion(model, False).predict(x, verbose=0)["prediction"], want, atol=1e-5)
    model.save(tmp_path / "labelled.keras")
    again = keras.saving.load_model(tmp_path / "labelled.keras")
    assert EnsembleView.of(again).classes == tuple(NAMES)
    assert [m.columns for m in EnsembleView.of(again).members] == [None, (2, 1, 0)]
    np.testing.assert_allclose(again.predict(x, verbose=0)["prediction"], want, atol=1e-5)


@pytest.mark.slow
def test_every_export_carries_the_labels_and_the_server_returns_them(tmp_path, wine, runs):
    """SavedModel (TensorFlow alone), ONNX (onnxruntime), TFLite and the REST server."""
    import tensorflow as tf

    from ensemble.export.onnx import read_onnx_manifest, run_onnx
    from ensemble.export.saved_model import read_manifest
    from ensemble.export.tflite import run_tflite
    from ensemble.serve.catalog import Catalog
    from ensemble.serve.http import create_app, running

    x, _ = wine
    order = [NAMES[1], NAMES[2], NAMES[0]]
    model = ensemble.build_ensemble(members(runs), combiners.MeanCombiner(), classes=order)
    want = model.predict(x[:4], verbose=0)["prediction"]
    export = ensemble.export_saved_model(model, tmp_path / "export")
    assert read_manifest(export)["classes"] == order
    answer = tf.saved_model.load(export).signatures["serving_default"](tf.constant(x[:4]))
    assert answer["classes"].numpy().astype(str).tolist() == [order] * 4
    np.testing.assert_allclose(answer["prediction"].numpy(), want, atol=1e-6)
    onnx_file = ensemble.export_onnx(model, tmp_path / "ensemble.onnx")
    assert read_onnx_manifest(onnx_file)["classes"] == order
    assert run_onnx(onnx_file, {"features": x[:4]})["classes"].tolist() == [order] * 4
    tflite = run_tflite(ensemble.export_tflite(export, tmp_path / "ensemble.tflite"), {"features": x[:4]})
    assert tflite["classes"].astype(str).tolist() == [order] * 4
    catalog = Catalog(ensemble.ModelRegistry())
    catalog.register("wine", export)
    body = json.dumps({"instances": x[:2].tolist()}).encode()
    with running(create_app(catalog)) as url:
        request = urllib.request.Request(f"{url}/v1/models/wine:predict", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            rows = json.loads(response.read())["predictions"]
    assert [row["classes"] for row in rows] == [order, order]
    np.testing.assert_allclose([row["prediction"] for row in rows], want[:2], atol=1e-5)


@pytest.mark.parametrize(
    "classes, message",
    [
        (["a", "b"], r"classes names 2 labels \['a', 'b'\], but the member emits 3 class columns"),
        ("abc", "expected classes as a non-empty list of labels"),
        (["a", "a", "b"], r"class labels must be distinct. Repeated: \['a'\]"),
        (["a", True, "b"], "Received: True at position 1"),
        ([], "expected classes as a non-empty list"),
    ],
)
def test_labels_that_do_not_fit_the_member_are_refused(classes, message):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(EnsembleError, match=message) as caught:
        ensemble.load_member(model, name="m", classes=classes)
    assert "'m'" in str(caught.value)


def test_labels_on_a_regressor_are_refused():
    regressor = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(MemberError, match="declares no class output: pass output="):
        ensemble.load_member(regressor, name="r", classes=["a", "b", "c"])
    plain = ensemble.load_member(regressor, name="r")
    with pytest.raises(EnsembleError, match="A regression ensemble has no classes"):
        ensemble.build_ensemble([plain], combiners.MeanCombiner(), task="regression", classes=["a", "b", "c"])


def test_members_over_other_label_sets_or_half_named_are_refused(runs):
    _, models = runs
    a = ensemble.load_member(models[0][0], name="a", classes=["cat", "dog", "emu"])
    b = ensemble.load_member(models[1][0], name="b", classes=["dog", "cat", "fox"])
    with pytest.raises(
        EnsembleError,
        match=r"Member 'b' predicts other classes than member 'a': it lacks \['emu'\] and has \['fox'\]",
    ):
        ensemble.build_ensemble([a, b], combiners.MeanCombiner())
    unnamed = ensemble.load_member(models[1][0], name="c")
    with pytest.raises(EnsembleError, match=r"Member\(s\) \['a'\] name their classes and \['c'\] do not"):
        ensemble.build_ensemble([a, unnamed], combiners.MeanCombiner())
    with pytest.raises(EnsembleError, match="it lacks"):
        ensemble.build_ensemble([a], combiners.MeanCombiner(), classes=["cat", "dog", "gnu"])


def test_the_readmes_class_label_example_runs_as_written(capsys):
    from tests.test_readme import section_code

    exec(compile(section_code("Class labels"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert "('setosa', 'versicolor', 'virginica') [None, (1, 2, 0)]" in printed


def test_calibrated_members_keep_their_labels_and_soups_refuse_mixed_orders(wine):
    x, y = wine
    orders = [NAMES, NAMES[::-1]]
    models = [run(x, y, order, slice(i, None, 2))[0] for i, order in enumerate(orders)]
    a, b = (
        ensemble.load_member(m, name=f"m{i}", classes=o)
        for i, (m, o) in enumerate(zip(models, orders, strict=True))
    )
    named = np.array([NAMES[label] for label in y])
    calibrated = ensemble.calibrate_member(b, x[1::2], named[1::2], allow_overlap=True)
    assert calibrated.classes == tuple(NAMES[::-1])
    with pytest.raises(EnsembleError, match="emit their classes in other orders"):
        ensemble.soup([a, b])


def test_the_level_one_store_keys_a_reordered_member_apart(wine, runs):
    """A store that holds a member's unaligned predictions never serves them to its aligned copy."""
    x, _ = wine
    orders, models = runs
    store = ensemble.LevelOneStore()
    blind = ensemble.build_ensemble(members(runs, named=False), combiners.MeanCombiner())
    aligned = ensemble.build_ensemble(members(runs), combiners.MeanCombiner())
    np.testing.assert_allclose(store.predictions(blind, x)[:, 1], models[1][1].predict_proba(x), atol=1e-5)
    want = by_label(models[1][1], x, orders[1], NAMES)
    np.testing.assert_allclose(store.predictions(aligned, x)[:, 1], want, atol=1e-5)


@pytest.mark.parametrize(
    ("classes", "labels", "refused"),
    [
        ([2, 0, 1], [0, 1, 2, 0], "label 0 could be the class named '0' or column 0"),
        ([1, 2, 3], [1, 2, 0, 1], "label 1 could be the class named '1' or column 1"),
        ([0, 1, 2], [0, 1, 2, 0], None),  # 0..K-1 in order: the class named 'k' is column k
        ([3, 7, 9], [0, 1, 2, 0], None),  # no label is a class's name: they can only be columns
    ],
)
def test_integer_labels_where_the_classes_are_integers_text(classes, labels, refused):
    rows = np.random.default_rng(1).normal(size=(4, 13)).astype("float32")
    model = ensemble.build_ensemble(
        [ensemble.load_member(_softmax_model(), name="a", classes=classes)], combiners.MeanCombiner()
    )
    if refused is None:
        ensemble.evaluate_ensemble(model, rows, np.array(labels))
        return
    with pytest.raises(EnsembleError, match=rf"y: integer labels are ambiguous .*{refused}.*astype\(str\)"):
        ensemble.evaluate_ensemble(model, rows, np.array(labels))
    ensemble.evaluate_ensemble(model, rows, np.array([*map(str, classes), str(classes[0])]))  # by name


def _softmax_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((13,)), keras.layers.Dense(3, activation="softmax")])
