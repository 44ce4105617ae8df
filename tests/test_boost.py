"""ensemble.boost and ensemble.bag: SAMME and bootstrap members against NumPy references."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import ensemble
from ensemble import EnsembleError


def weak_learner(index: int, seen: list[np.ndarray] | None = None) -> keras.Model:
    """Two hidden units: far from the task, as boosting wants; records its sample weights."""
    keras.utils.set_random_seed(index)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(2, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    if seen is not None:
        fit = model.fit

        def recording_fit(*args, sample_weight=None, **kwargs):
            seen.append(np.array(sample_weight))
            return fit(*args, sample_weight=sample_weight, **kwargs)

        model.fit = recording_fit
    return model


@pytest.fixture(scope="module")
def boosted(digits):
    x, y = digits
    seen: list[np.ndarray] = []
    model = ensemble.boost(
        lambda i: weak_learner(i, seen), x[:1000], y[:1000], rounds=6, epochs=10, batch_size=64, verbose=0
    )
    return model, seen


@pytest.mark.slow
def test_samme_weights_and_vote_match_numpy(digits, boosted):
    x, y = digits
    model, seen = boosted
    votes = model.predict(x[:1000], verbose=0)["member_predictions"].argmax(-1)  # (rows, members)
    rows, members = votes.shape
    weights, alphas = np.full(rows, 1 / rows), []
    for m in range(members):
        np.testing.assert_allclose(seen[m], weights * rows, rtol=1e-6)  # what member m trained on
        wrong = votes[:, m] != y[:1000]
        error = weights[wrong].sum() / weights.sum()
        alphas.append(np.log((1 - error) / error) + np.log(9))
        weights = weights * np.exp(alphas[-1] * wrong)
        weights /= weights.sum()
    np.testing.assert_allclose(ensemble.ensemble_combiner(model).member_weights, alphas, rtol=1e-6)
    held = model.predict(x[1000:], verbose=0)
    tally = np.zeros((len(held["prediction"]), 10))
    for m, alpha in enumerate(alphas):
        tally[np.arange(len(tally)), held["member_predictions"][:, m].argmax(-1)] += alpha
    np.testing.assert_array_equal(held["prediction"].argmax(-1), tally.argmax(-1))


def test_boosting_beats_one_weak_learner(digits, boosted):
    x, y = digits
    held = boosted[0].predict(x[1000:], verbose=0)
    boosted_accuracy = (held["prediction"].argmax(-1) == y[1000:]).mean()
    first_accuracy = (held["member_predictions"][:, 0].argmax(-1) == y[1000:]).mean()
    assert boosted_accuracy > first_accuracy + 0.1  # measured 0.73 vs 0.49


def test_the_guard_knows_what_trained_the_members(digits, boosted):
    x, _ = digits
    with pytest.raises(EnsembleError, match="trained member"):
        ensemble.check_leakage(boosted[0], x[:300])
    clean = ensemble.check_leakage(boosted[0], x[1000:])
    assert len(clean) == 6 and not any(clean.values()) and not clean.unchecked


@pytest.mark.slow
def test_it_exports_like_any_ensemble(digits, boosted, tmp_path):
    import tensorflow as tf

    x, _ = digits
    path = ensemble.export_saved_model(boosted[0], tmp_path / "export")
    served = tf.saved_model.load(str(path)).signatures["serving_default"](features=tf.constant(x[:7]))
    np.testing.assert_allclose(
        served["prediction"], boosted[0].predict(x[:7], verbose=0)["prediction"], atol=1e-6
    )


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
@pytest.mark.slow
def test_boosting_stops_at_a_perfect_member_and_refuses_chance():
    x = np.repeat(np.eye(2, 64, dtype="float32"), 20, axis=0)
    y = np.repeat([0, 1], 20)

    def strong(i):
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(keras.optimizers.Adam(0.5), "sparse_categorical_crossentropy")
        return model

    model = ensemble.boost(strong, x, y, rounds=5, epochs=20, verbose=0)
    assert ensemble.ensemble_combiner(model).member_weights == [1.0]

    def chance(i):
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(2, activation="softmax", trainable=False)]
        )
        model.layers[0].set_weights([np.zeros((64, 2), "float32"), np.zeros(2, "float32")])
        model.compile("adam", "sparse_categorical_crossentropy")
        return model

    with pytest.raises(EnsembleError, match="no better than chance"):
        ensemble.boost(chance, x, y, rounds=3, epochs=1, verbose=0)
    with pytest.raises(EnsembleError, match="integer class labels"):
        ensemble.boost(chance, x, y.astype(str), rounds=3)  # float targets: gradient boosting


@pytest.mark.slow
def test_bagging_trains_each_member_on_its_bootstrap_rows(digits):
    x, y = digits
    # One epoch: the rows each member trained on and the mean are what is checked, not accuracy.
    model = ensemble.bag(weak_learner, x[:600], y[:600], members=3, seed=4, epochs=1, verbose=0)
    rng = np.random.default_rng(4)
    for member in ensemble.ensemble_members(model):
        sample = rng.integers(0, 600, 600)
        np.testing.assert_array_equal(member.training_rows, x[:600][sample])
    out = model.predict(x[600:700], verbose=0)
    np.testing.assert_allclose(out["prediction"], out["member_predictions"].mean(1), atol=1e-6)


@pytest.mark.slow
def test_bagged_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype("float32")
    y = x @ np.array([1.0, -2.0, 0.5], "float32") + rng.normal(0, 0.1, 300).astype("float32")

    def linear(i):
        keras.utils.set_random_seed(i)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(0.1), "mse")
        return model

    # 10 epochs of 10 steps reach the noise floor (0.01) as 30 did: the bar is 0.05.
    model = ensemble.bag(linear, x, y, members=3, task="regression", epochs=10, batch_size=32, verbose=0)
    out = model.predict(x, verbose=0)
    assert sorted(out) == ["member_predictions", "prediction", "std"]
    assert np.mean((out["prediction"].ravel() - y) ** 2) < 0.05


class Centroids:
    """A weighted nearest-centroid classifier, the same in scikit-learn's API and as a Keras
    model whose `fit` sets its one Dense layer from the centroids: deterministic given the
    sample weights, so boosting it in both libraries must give the same members."""

    @staticmethod
    def centroids(x, y, sample_weight, classes):
        w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype="float64")
        return np.stack([np.average(x[y == k], axis=0, weights=w[y == k]) for k in range(classes)])


class SklearnCentroids(Centroids):
    def __init__(self):
        pass

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self

    def __sklearn_tags__(self):
        from sklearn.base import BaseEstimator, ClassifierMixin

        class Tagged(ClassifierMixin, BaseEstimator):
            pass

        return Tagged().__sklearn_tags__()

    def fit(self, x, y, sample_weight=None):
        self.classes_ = np.unique(y)
        self.centers_ = self.centroids(x, y, sample_weight, len(self.classes_))
        return self

    def predict(self, x):
        return np.argmin(((x[:, None, :] - self.centers_[None]) ** 2).sum(-1), axis=1)


class KerasCentroids(keras.Model):
    """Functional (one Dense layer of logits x.c - |c|^2 / 2, largest for the nearest
    centroid), with a `fit` that sets the layer from the weighted centroids."""

    def __init__(self, features: int, classes: int):
        inputs = keras.Input((features,))
        dense = keras.layers.Dense(classes)
        super().__init__(inputs, dense(inputs))
        self.classes, self.centroid_layer = classes, dense

    def fit(self, x, y, sample_weight=None, **kwargs):
        c = Centroids.centroids(np.asarray(x, "float64"), np.asarray(y), sample_weight, self.classes)
        self.centroid_layer.set_weights([c.T.astype("float32"), (-0.5 * (c**2).sum(-1)).astype("float32")])


def test_boosting_matches_scikit_learns_adaboost_on_a_deterministic_learner():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import AdaBoostClassifier

    x, y = make_classification(400, n_features=5, n_informative=3, n_classes=3, random_state=0)
    x = x.astype("float32")
    reference = AdaBoostClassifier(SklearnCentroids(), n_estimators=6).fit(x, y)
    ours = ensemble.boost(lambda i: KerasCentroids(5, 3), x, y, rounds=6)
    alphas = ensemble.ensemble_combiner(ours).member_weights
    np.testing.assert_allclose(alphas, reference.estimator_weights_[: len(alphas)], rtol=1e-4)
    assert len(alphas) == len(reference.estimators_)
    np.testing.assert_array_equal(ours.predict(x, verbose=0)["prediction"].argmax(-1), reference.predict(x))
