"""The small-ensemble study on synthetic probabilities and a tiny model: the ensemble is the mean
of its members, its gain is measured against the best member, and a member's probabilities are
scored once and then read back from its run folder."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.studies.ensemble_study import ENSEMBLE, member_probabilities, study

LABELS = {
    "hbfmid_check": ["fractured", "fractured", "beyond_repair", "healthy"],
    "knee_oai": ["healthy"] * 3,
    "wrist_check": ["healthy"] * 3,
}
FRACTURED = np.array([True, True, False, False])


def member(hbfmid, knees, wrists, val=(0.9, 0.6, 0.4, 0.1), ms=100.0) -> dict:
    checks = {"hbfmid_check": np.array(hbfmid), "knee_oai": np.array(knees), "wrist_check": np.array(wrists)}
    return {"val": np.array(val), "checks": checks, "ms": ms}


def test_an_ensemble_of_one_model_twice_is_that_model_at_twice_the_cost():
    one = member([0.9, 0.8, 0.7, 0.1], [0.2, 0.3, 0.95], [0.1, 0.75, 0.2])
    result = study({"a": one, "a again": one}, FRACTURED, LABELS)
    for key in ("val_fracatlas_auroc", "offsource_auroc", "auroc_vs_knee_oai", "auroc_vs_wrist_check"):
        assert result[ENSEMBLE][key] == pytest.approx(result["a"][key])
    assert result[ENSEMBLE]["ms_per_image"] == 200.0
    assert result["gain"] == pytest.approx(0.0)


def test_members_wrong_on_different_sources_gain_from_their_mean():
    # A ranks one knee above every fracture, B one wrist: each member's worst source is below 1.
    a = member([0.9, 0.8, 0.7, 0.1], [0.95, 0.1, 0.1], [0.2, 0.2, 0.2])
    b = member([0.9, 0.8, 0.7, 0.1], [0.2, 0.2, 0.2], [0.95, 0.1, 0.1])
    result = study({"a": a, "b": b}, FRACTURED, LABELS)
    assert result["a"]["offsource_auroc"] < 1.0 and result["b"]["offsource_auroc"] < 1.0
    assert result[ENSEMBLE]["offsource_auroc"] == 1.0  # the mean puts 0.575 below every fracture
    assert result["gain"] == pytest.approx(1.0 - max(result["a"]["offsource_auroc"], result["b"]["offsource_auroc"]))


def tiny_model() -> keras.Model:
    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="ones")(pooled))


def test_a_members_probabilities_are_scored_once_then_read_from_its_run(tmp_path):
    rng = np.random.default_rng(0)
    val = {"images": rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)}
    checks = {
        name: {"images": rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)}
        for name, n in (("knee_oai", 3), ("wrist_check", 2), ("hbfmid_check", 4))
    }
    tiny_model().save(tmp_path / "model.keras")
    first = member_probabilities(tmp_path, val, checks)
    assert first["val"].shape == (5,) and {k: len(v) for k, v in first["checks"].items()} == {
        "knee_oai": 3,
        "wrist_check": 2,
        "hbfmid_check": 4,
    }
    assert np.all((first["val"] >= 0) & (first["val"] <= 1))

    (tmp_path / "model.keras").unlink()  # a second call must not need the model
    again = member_probabilities(tmp_path, val, checks)
    np.testing.assert_array_equal(again["val"], first["val"])
    np.testing.assert_array_equal(again["checks"]["hbfmid_check"], first["checks"]["hbfmid_check"])

    checks["knee_oai"]["images"] = checks["knee_oai"]["images"][:2]  # other films: scored anew
    with pytest.raises(ValueError):
        member_probabilities(tmp_path, val, checks)
