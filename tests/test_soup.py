"""Model soups: the mean of runs' weights, refused when the runs cannot share one basin."""

import json

import keras
import numpy as np
import pytest

from training.studies.soup import average_weights, make_soup


def tiny_run(folder, seed: int, init_sha: str = "ab" * 32, units: int = 3):
    folder.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units), keras.layers.Dense(2)])
    model.save(folder / "model.keras")
    summary = {"args": {"init_from": "model/bone_xray_inceptionv3.keras"}, "init_from_sha256": init_sha}
    (folder / "train_summary.json").write_text(json.dumps(summary))
    return model


def test_the_soup_is_the_mean_of_the_weights():
    a = [np.zeros((2, 2), np.float32), np.array([1.0, 3.0], np.float32)]
    b = [np.full((2, 2), 2.0, np.float32), np.array([3.0, 5.0], np.float32)]
    soup = average_weights([a, b])
    np.testing.assert_allclose(soup[0], np.ones((2, 2)))
    np.testing.assert_allclose(soup[1], [2.0, 4.0])
    assert soup[0].dtype == np.float32


def test_weights_that_do_not_line_up_are_refused():
    with pytest.raises(ValueError, match="differ in architecture"):
        average_weights([[np.zeros((2, 2))], [np.zeros((2, 3))]])
    with pytest.raises(ValueError, match="at least two"):
        average_weights([[np.zeros(2)]])


def test_a_soup_of_two_runs_is_saved_and_predicts_with_the_mean_weights(tmp_path):
    first, second = tiny_run(tmp_path / "a", seed=1), tiny_run(tmp_path / "b", seed=2)
    path = make_soup([tmp_path / "a", tmp_path / "b"], tmp_path / "soup")
    soup = keras.saving.load_model(path, compile=False)
    for got, w1, w2 in zip(soup.get_weights(), first.get_weights(), second.get_weights()):
        np.testing.assert_allclose(got, (w1 + w2) / 2, rtol=1e-6)


def test_runs_from_different_starting_models_are_refused(tmp_path):
    tiny_run(tmp_path / "a", seed=1, init_sha="ab" * 32)
    tiny_run(tmp_path / "b", seed=2, init_sha="cd" * 32)
    with pytest.raises(ValueError, match="different models"):
        make_soup([tmp_path / "a", tmp_path / "b"], tmp_path / "soup")
