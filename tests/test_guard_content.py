"""The leakage guard follows the content: a member recorded once stays guarded when loaded
through a symbolic link, a hard link, a copy or a moved file; a file replaced by another model
keeps no stale record; a damaged record is an error naming its file; an unrecorded member is
a warning and is named in `report.md`."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import zipfile

import keras
import numpy as np
import pytest

import combiners
import ensemble
from ensemble.evaluate.report import write_report
from ensemble.members.fingerprint import content_fingerprint, member_fingerprint
from ensemble.members.training_rows import STORE_VARIABLE, training_rows_path

FEATURES, TRAIN = 4, 60


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The store of records keyed by content, in a temporary folder for this module."""
    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STORE_VARIABLE, str(folder))
        yield folder


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, FEATURES)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64")


def tiny(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2, activation="softmax")])


@pytest.fixture(scope="module")
def recorded(store, data, tmp_path_factory):
    """A member saved and recorded as a user's script does: `save`, then `record_training_rows`."""
    path = tmp_path_factory.mktemp("original") / "member.keras"
    tiny(1).save(path)
    ensemble.record_training_rows(path, data[0][:TRAIN])
    return path


def _symlink(original, folder):
    os.symlink(original, folder / "linked.keras")
    return folder / "linked.keras"


def _hardlink(original, folder):
    os.link(original, folder / "linked.keras")
    return folder / "linked.keras"


def _copy(original, folder):
    return shutil.copy2(original, folder / "copied.keras")


def _move(original, folder):
    """The model file alone moved (its record left where it was recorded)."""
    (folder / "before").mkdir()
    shutil.copy2(original, folder / "before" / "member.keras")
    shutil.copy2(training_rows_path(original), training_rows_path(folder / "before" / "member.keras"))
    return shutil.move(folder / "before" / "member.keras", folder / "moved.keras")


def _h5(original, folder):
    """Re-saved in the legacy format: its weights load under other paths (no model name)."""
    keras.models.load_model(original).save(folder / "resaved.h5")
    return folder / "resaved.h5"


_h5.__name__ = "h5"
PLACES = [_symlink, _hardlink, _copy, _move, _h5]


@pytest.mark.parametrize("place", PLACES, ids=["symlink", "hardlink", "copy", "move", "h5"])
def test_a_recorded_member_is_guarded_wherever_its_file_is(recorded, data, tmp_path, place):
    x, y = data
    path = place(recorded, tmp_path)
    assert not os.path.exists(os.fspath(path) + ".training_rows.npy")  # nothing beside it
    member = ensemble.load_member(path, name="placed")
    np.testing.assert_array_equal(member.training_rows, x[:TRAIN])
    model = ensemble.build_ensemble([member], combiners.StackingCombiner())
    with pytest.raises(ensemble.EnsembleError, match=rf"trained member\(s\) \{{'placed': {TRAIN}\}}"):
        ensemble.fit(model, x[:TRAIN], y[:TRAIN])
    assert ensemble.fit(model, x[TRAIN:], y[TRAIN:]).overlaps == {"placed": 0}


def test_the_fingerprint_is_of_the_content_not_the_name_or_declarations(recorded, store):
    plain = ensemble.load_member(recorded, name="plain")
    declared = ensemble.load_member(recorded, name="declared", output="probabilities", classes=["a", "b"])
    assert content_fingerprint(plain) == content_fingerprint(declared)
    assert member_fingerprint(plain) != member_fingerprint(declared)  # the level-one key: declarations too
    with np.load(store / f"{content_fingerprint(plain)}.npz") as entry:  # the store's entry
        assert str(entry["fingerprint"]) == content_fingerprint(plain)
        np.testing.assert_array_equal(entry["rows"], np.load(training_rows_path(recorded)))


@pytest.mark.parametrize("saved_first", [True, False], ids=["recorded-after-save", "recorded-before-save"])
def test_a_file_replaced_by_another_model_keeps_no_stale_record(data, store, tmp_path, caplog, saved_first):
    """Recorded after its save, the record names its model; recorded before (as the zoo does),
    the first load binds it. Either way another model saved over the file is unguarded, said."""
    x, _ = data
    path = tmp_path / "replaced.keras"
    first, other = (2, 3) if saved_first else (12, 13)  # the module's store keeps each one's record
    if saved_first:
        tiny(first).save(path)
    ensemble.record_training_rows(path, x[:TRAIN])
    if not saved_first:
        tiny(first).save(path)
        assert ensemble.load_member(path, name="first").training_rows is not None  # binds it
    tiny(other).save(path)  # another model, its record not made again
    with caplog.at_level(logging.WARNING, logger="ensemble.members"):
        member = ensemble.load_member(path, name=f"replaced_{saved_first}")
    assert member.training_rows is None
    message = caplog.text
    assert training_rows_path(path) in message and str(path) in message and "another model" in message
    assert not (store / f"{content_fingerprint(member)}.npz").exists()
    model = ensemble.build_ensemble([member], combiners.MeanCombiner())
    assert ensemble.check_leakage(model, x[:TRAIN]).unchecked == [member.name]
    ensemble.record_training_rows(path, x[TRAIN:])  # recorded again: guarded again
    assert ensemble.load_member(path, name="again").training_rows.shape == (len(x) - TRAIN, FEATURES)


def _truncated(path, valid):
    assert zipfile.is_zipfile(io.BytesIO(valid))
    path.write_bytes(valid[: len(valid) // 2])


def _truncated_old_format(path, valid):
    np.save(path, np.zeros((TRAIN, FEATURES), "float32"))
    path.write_bytes(path.read_bytes()[:200])


def _garbage(path, valid):
    path.write_bytes(b"not a record at all" * 10)


def _object_array(path, valid):
    np.save(path, np.array([{"rows": 1}, None], dtype=object), allow_pickle=True)


def _wrong_dtype(path, valid):
    np.save(path, np.zeros((TRAIN, FEATURES), "int32"))


def _wrong_shape(path, valid):
    np.save(path, np.zeros((TRAIN, FEATURES, 1), "float32"))


def _non_finite(path, valid):
    np.save(path, np.full((TRAIN, FEATURES), np.nan, "float32"))


def _archive_without_rows(path, valid):
    with open(path, "wb") as f:
        np.savez(f, fingerprint=np.array(""), source=np.array(""))


DAMAGE = {
    "truncated": (_truncated, "damaged"),
    "truncated-old-format": (_truncated_old_format, "damaged"),
    "garbage": (_garbage, "damaged"),
    "object-array": (_object_array, "damaged"),
    "wrong-dtype": (_wrong_dtype, "Received: int32"),
    "wrong-shape": (_wrong_shape, r"shape \(60, 4, 1\)"),
    "non-finite": (_non_finite, "non-finite"),
    "archive-without-rows": (_archive_without_rows, "without \\['rows'\\]"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_record_is_an_error_naming_its_file(recorded, store, tmp_path, damage):
    harm, said = damage
    path = tmp_path / "damaged.keras"
    tiny(4).save(path)  # a model no store knows: its record is the one beside it
    record = tmp_path / "damaged.keras.training_rows.npy"
    fingerprint = content_fingerprint(ensemble.load_member(recorded, name="valid"))
    harm(record, (store / f"{fingerprint}.npz").read_bytes())  # a valid record's bytes
    with pytest.raises(ensemble.EnsembleError, match=said) as raised:
        ensemble.load_member(path, name="damaged")
    text = str(raised.value)
    assert "Member 'damaged'" in text and repr(str(record)) in text and "record_training_rows" in text
    assert not re.search(r"^(Object arrays|Failed to read)", text)


def test_an_unrecorded_member_is_a_warning_and_named_in_the_report(recorded, data, tmp_path, caplog):
    x, y = data
    path = tmp_path / "stranger.keras"
    tiny(5).save(path)
    members = [
        ensemble.load_member(path, name="stranger_unrecorded"),
        ensemble.load_member(recorded, name="known"),
    ]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner())
    with caplog.at_level(logging.WARNING, logger="ensemble.fitting"):
        report = ensemble.fit(model, x[TRAIN:], y[TRAIN:])
    warned = [
        r for r in caplog.records if r.levelno == logging.WARNING and "stranger_unrecorded" in r.getMessage()
    ]
    assert warned and "cannot check it" in warned[0].getMessage()
    assert report.unguarded == ["stranger_unrecorded"]
    scores = ensemble.evaluate_ensemble(model, x[TRAIN:], y[TRAIN:], fit_report=report)
    split = {"train": TRAIN, "holdout": len(x) - TRAIN, "test": len(x) - TRAIN}
    result = {**report.as_dict(), **scores, "data": {"name": "synthetic", "rows": split, "seed": 0}}
    write_report(tmp_path / "report.md", result, {}, "seed: 0")
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Leakage guard")[1].split("\n## ")[0]
    checked, unguarded = section.split("Unguarded members")
    assert "`known`" in checked and "`stranger_unrecorded`" not in checked
    assert "`stranger_unrecorded`" in unguarded and "`known`" not in unguarded


def test_a_saved_model_directory_is_guarded_through_a_link_and_a_copy(store, data, tmp_path):
    x, _ = data
    directory = tmp_path / "exported"
    tiny(6).export(directory, verbose=False)
    ensemble.record_training_rows(directory, x[:TRAIN])
    os.symlink(directory, tmp_path / "linked")
    shutil.copytree(directory, tmp_path / "copied")
    for name, where in (("sm_linked", tmp_path / "linked"), ("sm_copied", tmp_path / "copied")):
        member = ensemble.load_member(where, name=name, output="probabilities")
        np.testing.assert_array_equal(member.training_rows, x[:TRAIN])
        model = ensemble.build_ensemble([member], combiners.MeanCombiner())
        assert ensemble.check_leakage(model, x, allow_overlap=True) == {name: TRAIN}


@pytest.mark.parametrize("how", ["copied-then-replaced", "replaced-store-wiped"])
def test_the_binding_travels_with_the_record(data, store, tmp_path, caplog, how):
    """The note naming a record's model sits beside it (with the record's own hash), so the
    files copied elsewhere and another model saved over the copy, or the file replaced where
    the store never saw it (another machine, a cleared cache), keep no stale record."""
    x, _ = data
    path = tmp_path / "a.keras"
    tiny(4).save(path)
    ensemble.record_training_rows(path, x[:TRAIN])
    if how == "copied-then-replaced":
        (tmp_path / "other").mkdir()
        for file in tmp_path.glob("a.keras*"):
            shutil.copy(file, tmp_path / "other" / file.name)
        path = tmp_path / "other" / "a.keras"
    tiny(5).save(path)
    if how == "replaced-store-wiped":
        shutil.rmtree(store)
        store.mkdir()
    with caplog.at_level(logging.WARNING, logger="ensemble.members"):
        member = ensemble.load_member(path, name="replaced")
    assert member.training_rows is None and "made for another model" in caplog.text


def test_a_record_changed_beside_its_model_yields_to_the_bound_one(store, data, tmp_path, caplog):
    """A record overwritten beside the model (not by `record_training_rows`) would weaken the
    guard: the store's record, bound to this content when it was recorded, is used, every load."""
    x, _ = data
    path = tmp_path / "member.keras"
    tiny(7).save(path)
    ensemble.record_training_rows(path, x[:TRAIN])
    np.save(training_rows_path(path), x[:5])  # the first 5 rows only
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ensemble"):
            member = ensemble.load_member(path, name="tampered")
        np.testing.assert_array_equal(member.training_rows, x[:TRAIN])
        assert f"the store's record of it ({TRAIN} rows) is used" in caplog.text
