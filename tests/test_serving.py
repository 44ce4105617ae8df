"""compiled_predict: the same outputs as the model, traced once across batch sizes, XLA too."""

from __future__ import annotations

import numpy as np
import pytest

import combiners
import ensemble
from tests.conftest import dense_classifier, two_input_ensemble


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.slow
def test_compiled_predict_matches_and_never_retraces(jit_compile):
    model = ensemble.build_ensemble(
        [dense_classifier(1, name="a"), dense_classifier(2, name="b")], combiners.StackingCombiner()
    )
    predict = ensemble.compiled_predict(model, jit_compile=jit_compile)
    assert ensemble.compiled_predict(model, jit_compile=jit_compile) is predict  # cached
    rng = np.random.default_rng(0)
    for rows in (1, 7, 64, 3):
        x = rng.normal(size=(rows, 8)).astype("float32")
        out = predict(x)
        for key, value in model(x).items():
            np.testing.assert_allclose(out[key], value, atol=1e-5, err_msg=key)
    assert predict.function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("shape", [(2, 3), (8,), (2, 1), (2, 8, 1)])
def test_compiled_predict_names_an_input_of_the_wrong_shape(shape):
    model = ensemble.build_ensemble([dense_classifier(1, name="a")], combiners.MeanCombiner())
    with pytest.raises(
        ensemble.EnsembleError, match=r"Input 'features': expected rows of shape \(batch, 8\)"
    ):
        ensemble.compiled_predict(model)(np.zeros(shape, "float32"))
    feeds = {"image": np.ones((5, 4), "float32"), "meta": np.zeros((5, 3), "float32")}
    with pytest.raises(ensemble.EnsembleError, match=r"Input 'meta': expected rows of shape \(batch, 2\)"):
        ensemble.compiled_predict(two_input_ensemble())(feeds)


def test_compiled_predict_with_named_inputs():
    model = two_input_ensemble()
    feeds = {"image": np.ones((5, 4), "float32"), "meta": np.zeros((5, 2), "float32")}
    np.testing.assert_allclose(
        ensemble.compiled_predict(model)(feeds)["prediction"], model(feeds)["prediction"], atol=1e-6
    )


def test_compiled_predict_refuses_a_cast_that_changes_a_value():
    # As the registry and HTTP feed an integer input: 1.7 is no integer and 2**33 + 1 wraps to
    # 1 in int32; both would otherwise answer as the row [1, 1, 1, 1] does.
    keras = pytest.importorskip("keras")
    ids = keras.Input((4,), dtype="int32", name="ids")
    member = keras.Model(ids, keras.layers.Dense(3, activation="softmax")(keras.ops.cast(ids, "float32")))
    predict = ensemble.compiled_predict(ensemble.build_ensemble([member], combiners.MeanCombiner()))
    predict(np.ones((1, 4), "int64"))
    with pytest.raises(ensemble.EnsembleError, match=r"Input 'features', row 0: 1\.7.*not an integer"):
        predict(np.array([[1.7, 1, 1, 1]]))
    with pytest.raises(ensemble.EnsembleError, match=r"Input 'features', row 0:.*outside int32's range"):
        predict(np.array([[2**33 + 1, 1, 1, 1]], dtype="int64"))
