"""Fused members (`build_ensemble(..., fuse=True)`): members of one architecture computed as one
batched computation equal the unfused graph, and each member alone, in every output."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from ensemble.graph.fused import FusedMembers, fusable_groups
from ensemble.graph.member_outputs import with_fusion
from tests.conftest import FEATURES, dense_classifier

keras = pytest.importorskip("keras")


def _mlp(seed: int, hidden: tuple[int, ...] = (16, 8), *, final: str | None = "softmax", out: int = 3):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((FEATURES,))]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
    layers += [keras.layers.Dropout(0.5), keras.layers.Dense(out), keras.layers.Activation(final or "linear")]
    return keras.Sequential(layers)


def _functional(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def _rows(n: int = 33, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype("float32")


def _assert_same_outputs(a: keras.Model, b: keras.Model, x: np.ndarray) -> None:
    # Each model called on the rows: the forward pass `predict` runs, without tracing a predict
    # function per model (the same inference graph; Dropout off).
    got, want = ({k: np.asarray(v) for k, v in m(x).items()} for m in (b, a))
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-6, err_msg=key)


def _members(kinds: list[str]) -> list[ensemble.Member]:
    made = {
        "mlp": lambda i: ensemble.load_member(_mlp(i), name=f"mlp{i}"),
        "logits": lambda i: ensemble.load_member(_mlp(i, final=None), name=f"logits{i}", output="logits"),
        "functional": lambda i: ensemble.load_member(_functional(i), name=f"fn{i}", output="logits"),
        "narrow": lambda i: ensemble.load_member(_mlp(i, (5,)), name=f"narrow{i}"),
        "small": lambda i: ensemble.load_member(dense_classifier(i), name=f"small{i}"),
    }
    return [made[kind](i) for i, kind in enumerate(kinds)]


@pytest.mark.parametrize(
    "kinds, groups",
    [
        (["mlp", "mlp", "mlp"], [["mlp0", "mlp1", "mlp2"]]),
        (["logits", "logits"], [["logits0", "logits1"]]),
        (["functional", "functional", "small"], [["fn0", "fn1"]]),
        # Two groups interleaved with a member of its own: the members keep their order.
        (
            ["mlp", "narrow", "small", "mlp", "narrow", "small"],
            [["mlp0", "mlp3"], ["narrow1", "narrow4"], ["small2", "small5"]],
        ),
        (["mlp", "narrow", "mlp"], [["mlp0", "mlp2"]]),
    ],
)
@pytest.mark.slow
def test_fused_graph_equals_unfused_in_every_output(kinds, groups):
    members = _members(kinds)
    plain = ensemble.build_ensemble(members, combiners.MeanCombiner())
    fused = ensemble.build_ensemble(members, combiners.MeanCombiner(), fuse=True)
    view = ensemble.EnsembleView.of(fused)
    assert view.fused == groups
    assert view.member_names == [m.name for m in members]
    assert sum(isinstance(layer, FusedMembers) for layer in fused.layers) == len(groups)
    _assert_same_outputs(plain, fused, _rows())
    # Each member's column equals the member alone (invariant 1).
    x = _rows()
    stacked = fused.predict(x, verbose=0)["member_predictions"]
    for i, member in enumerate(members):
        np.testing.assert_allclose(stacked[:, i], np.asarray(member(x)), atol=1e-6, err_msg=member.name)


def test_default_and_false_fuse_nothing_and_bad_values_are_refused():
    members = _members(["mlp", "mlp"])
    for fuse in (None, False):
        model = ensemble.build_ensemble(members, combiners.MeanCombiner(), fuse=fuse)
        assert ensemble.EnsembleView.of(model).fused == []
    with pytest.raises(ensemble.EnsembleError, match="fuse"):
        ensemble.build_ensemble(members, combiners.MeanCombiner(), fuse="yes")


def test_only_chains_of_dense_layers_of_one_architecture_are_grouped():
    inputs = keras.Input((FEATURES,))
    left, right = keras.layers.Dense(4)(inputs), keras.layers.Dense(4)(inputs)
    branchy = keras.Model(
        inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Add()([left, right]))
    )
    keras.utils.set_random_seed(0)
    conv = keras.Sequential(
        [
            keras.Input((FEATURES, 1)),
            keras.layers.Conv1D(2, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    members = [
        ensemble.load_member(branchy, name="b0"),
        ensemble.load_member(keras.models.clone_model(branchy), name="b1"),
        ensemble.load_member(conv, name="c0", inputs="series"),
        ensemble.load_member(keras.models.clone_model(conv), name="c1", inputs="series"),
        ensemble.load_member(_mlp(0), name="relu"),
        ensemble.load_member(_mlp(1, final="sigmoid"), name="sigmoid"),  # another final activation
        ensemble.load_member(_mlp(2), name="other_input", inputs="other"),
    ]
    assert fusable_groups(members) == []
    # A float16 layer rounds what it computes, and an activation layer with weights (PReLU)
    # or a LeakyReLU object as activation is no plain function: never fused, never a crash.
    for seed, make in enumerate(
        [
            lambda: keras.layers.Activation("softmax", dtype="float16"),
            lambda: keras.layers.Dropout(0.1, dtype="mixed_float16"),
            lambda: keras.layers.Dense(3, activation=keras.layers.LeakyReLU(0.3)),
        ]
    ):
        keras.utils.set_random_seed(seed)
        odd = [
            ensemble.load_member(
                keras.Sequential(
                    [keras.Input((FEATURES,)), keras.layers.Dense(3, activation="softmax"), make()]
                ),
                name=f"odd{i}",
            )
            for i in range(2)
        ]
        assert fusable_groups(odd) == [], seed
    with pytest.raises(ValueError, match="fusable architecture"):
        FusedMembers(members[4:6])


def test_large_regression_outputs_agree_to_float32_rounding_of_their_magnitude():
    regressors = [ensemble.load_member(_mlp(i, (64, 64), final=None, out=2), name=f"r{i}") for i in range(3)]
    x = 100 * _rows(50)
    plain = ensemble.build_ensemble(regressors, combiners.MeanCombiner(), task="regression")
    fused = ensemble.build_ensemble(regressors, combiners.MeanCombiner(), task="regression", fuse=True)
    want, got = plain.predict(x, verbose=0), fused.predict(x, verbose=0)
    assert np.abs(want["prediction"]).max() > 10  # large enough for the order of the sums to show
    for key in want:
        np.testing.assert_allclose(
            got[key], want[key], rtol=1e-6, atol=1e-6 * np.abs(want[key]).max(), err_msg=key
        )


def test_a_fused_regression_ensemble_and_a_binary_sigmoid_classifier():
    regressors = [ensemble.load_member(_mlp(i, final=None, out=2), name=f"r{i}") for i in range(3)]
    x = _rows()
    plain = ensemble.build_ensemble(regressors, combiners.MeanCombiner(), task="regression")
    fused = ensemble.build_ensemble(regressors, combiners.MeanCombiner(), task="regression", fuse=True)
    assert ensemble.EnsembleView.of(fused).fused == [["r0", "r1", "r2"]]
    _assert_same_outputs(plain, fused, x)
    binary = [
        ensemble.load_member(_mlp(i, final="sigmoid", out=1), name=f"s{i}", output="probabilities")
        for i in range(2)
    ]
    _assert_same_outputs(
        ensemble.build_ensemble(binary, combiners.MeanCombiner()),
        ensemble.build_ensemble(binary, combiners.MeanCombiner(), fuse=True),
        x,
    )


def test_both_paths_of_the_row_switch_equal_the_members():
    members = _members(["mlp", "mlp", "mlp"])
    layer = FusedMembers(members, max_fused_rows=4)
    for rows in (0, 1, 4, 5, 40):
        x = _rows(rows)
        got = np.asarray(layer(x))
        want = np.stack([np.asarray(m(x)) for m in members], axis=1)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{rows} rows")
    compiled = tf.function(layer, input_signature=[tf.TensorSpec((None, FEATURES), tf.float32)])
    for rows in (2, 9):  # one traced graph takes both branches
        want = np.stack([np.asarray(m(_rows(rows))) for m in members], axis=1)
        np.testing.assert_allclose(compiled(_rows(rows)).numpy(), want, atol=1e-6)


def test_non_finite_rows_stay_nan_when_fused():
    fused = ensemble.build_ensemble(
        _members(["mlp", "mlp"]), combiners.VoteCombiner(voting="hard"), fuse=True
    )
    x = _rows(4)
    x[1, 3] = np.nan
    outputs = fused.predict(x, verbose=0)
    for key, value in outputs.items():
        assert np.isnan(value[1]).all(), key
        assert np.isfinite(value[[0, 2, 3]]).all(), key


@pytest.mark.slow
def test_fused_ensemble_round_trips_keras_file_and_saved_model(tmp_path):
    members = _members(["mlp", "small", "mlp"])
    fused = ensemble.build_ensemble(members, combiners.StackingCombiner(), fuse=True)
    x = _rows()
    want = fused.predict(x, verbose=0)
    fused.save(tmp_path / "fused.keras")
    reloaded = keras.saving.load_model(tmp_path / "fused.keras")
    assert ensemble.EnsembleView.of(reloaded).fused == [["mlp0", "mlp2"]]
    for key, value in reloaded.predict(x, verbose=0).items():
        np.testing.assert_allclose(value, want[key], atol=1e-6, err_msg=key)
    path = ensemble.export_saved_model(fused, tmp_path / "export")
    assert ensemble.read_manifest(path)["fused"] == [["mlp0", "mlp2"]]
    served = tf.saved_model.load(path).signatures["serving_default"](features=tf.constant(x))
    for key, value in served.items():
        np.testing.assert_allclose(value.numpy(), want[key], atol=1e-6, err_msg=key)
    unfused = ensemble.build_ensemble(members, combiners.StackingCombiner())
    assert ensemble.read_manifest(ensemble.export_saved_model(unfused, tmp_path / "plain"))["fused"] == []


@pytest.mark.slow
def test_fitting_a_fused_ensemble_equals_fitting_the_unfused_one():
    rng = np.random.default_rng(3)
    x_train, x_hold = _rows(60, seed=4), _rows(90, seed=5)
    y_hold = rng.integers(0, 3, size=90)
    members = _members(["mlp", "mlp", "small"])
    for member in members:
        member.training_rows = x_train  # what record_training_rows writes beside a file
    models = [ensemble.build_ensemble(members, combiners.StackingCombiner(), fuse=f) for f in (False, True)]
    for model in models:
        ensemble.fit(model, x_hold, y_hold, calibration="temperature")
    _assert_same_outputs(models[0], models[1], _rows(20, seed=6))
    # Rows a member trained on are refused as they are without fusion.
    with pytest.raises(ensemble.EnsembleError):
        ensemble.fit(models[1], x_train, rng.integers(0, 3, size=60))


def test_rewiring_a_fitted_conformal_ensemble_with_and_without_fusion_keeps_its_state():
    rng = np.random.default_rng(7)
    members = _members(["mlp", "small", "mlp", "mlp"])
    model = ensemble.build_ensemble(members, combiners.VoteCombiner(voting="soft", weights=[1, 2, 3, 4]))
    model = ensemble.add_conformal(model, _rows(80, seed=8), rng.integers(0, 3, size=80), alpha=0.2)
    fused = with_fusion(model, True)
    assert ensemble.EnsembleView.of(fused).fused == [["mlp0", "mlp2", "mlp3"]]
    assert ensemble.EnsembleView.of(fused).member_names == ["mlp0", "small1", "mlp2", "mlp3"]
    assert "prediction_set" in fused.output
    _assert_same_outputs(model, fused, _rows(25, seed=9))
    assert with_fusion(fused, True) is fused and with_fusion(model, False) is model
    unfused = with_fusion(fused, False)
    assert ensemble.EnsembleView.of(unfused).fused == []
    _assert_same_outputs(model, unfused, _rows(25, seed=9))
    with pytest.raises(ensemble.EnsembleError, match="fuse"):
        with_fusion(model, None)


@pytest.mark.slow
def test_export_onnx_fuses_on_request_and_answers_as_the_unfused_ensemble(tmp_path):
    from ensemble.export import read_onnx_manifest, run_onnx

    members = _members(["mlp", "mlp", "small"])
    model = ensemble.build_ensemble(members, combiners.StackingCombiner())
    x = _rows(21, seed=10)
    want = model.predict(x, verbose=0)
    fused_path = ensemble.export_onnx(model, tmp_path / "fused.onnx", fuse=True)
    plain_path = ensemble.export_onnx(model, tmp_path / "plain.onnx")
    assert read_onnx_manifest(fused_path)["fused"] == [["mlp0", "mlp1"]]
    assert read_onnx_manifest(plain_path)["fused"] == []
    for path in (fused_path, plain_path):
        got = run_onnx(path, {"features": x})
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=f"{path}: {key}")
    # Each weight once: the fused file holds the stacked kernels in place of the members' own,
    # each consumed by a MatMul (an einsum's conversion left a (members, 1, in, out) copy of
    # the stacked kernel behind, read only for its shape).
    fused, plain = (_initializer_elements(path) for path in (fused_path, plain_path))
    kernels = sum(int(np.prod(member.model.layers[0].kernel.shape)) for member in members[:2])
    assert abs(sum(fused.values()) - sum(plain.values())) <= 64 < kernels  # a few shapes differ
    assert all(readers <= {"MatMul", "Add"} for readers, size in fused.items() if size > 64), fused
    export_dir = ensemble.export_saved_model(model, tmp_path / "export")
    with pytest.raises(ensemble.EnsembleError, match="needs the ensemble"):
        ensemble.export_onnx(export_dir, tmp_path / "from_dir.onnx", fuse=True)


def _initializer_elements(path) -> dict[frozenset[str], int]:
    """An ONNX file's initializer elements, summed by the op types that read them."""
    import onnx

    graph = onnx.load(str(path)).graph
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    sizes: dict[frozenset[str], int] = {}
    for tensor in graph.initializer:
        key = frozenset(readers.get(tensor.name, set()))
        sizes[key] = sizes.get(key, 0) + int(np.prod(tensor.dims))
    return sizes
