"""The model card says what the run did: where it started, which layers trained, which framings."""

import json

import pytest

from training.augment import AUGMENTATIONS
from training.export import framings_sentence, starting_bundle, trained_layers_sentence


def write_bundle(directory, version="2.0.0", sha256="ab" * 32):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.keras").write_bytes(b"weights")
    (directory / "metadata.json").write_text(
        json.dumps({"model_file": "model.keras", "version": version, "sha256": sha256})
    )
    return directory / "model.keras"


def test_a_run_from_pretrained_weights_has_no_starting_bundle():
    assert starting_bundle(None) is None


def test_the_starting_bundle_is_read_from_the_metadata_beside_it(tmp_path):
    path = write_bundle(tmp_path / "model")
    start = starting_bundle(str(path), "ab" * 32)
    assert start == {"file": "model.keras", "version": "2.0.0", "sha256": "ab" * 32}


def test_a_replaced_starting_bundle_is_refused(tmp_path):
    """The run started from one model; a newer one at the same path must not be named instead."""
    path = write_bundle(tmp_path / "model", version="2.1.0", sha256="cd" * 32)
    with pytest.raises(ValueError, match="no longer the model the run started from"):
        starting_bundle(str(path), "ab" * 32)


def test_metadata_that_describes_another_file_is_refused(tmp_path):
    path = write_bundle(tmp_path / "model")
    other = path.with_name("other.keras")
    other.write_bytes(b"weights")
    with pytest.raises(ValueError, match="does not describe other.keras"):
        starting_bundle(str(other))


def test_the_card_names_the_trained_layers():
    assert trained_layers_sentence("input").startswith("every layer fine-tuned")
    assert "`mixed5` frozen" in trained_layers_sentence("mixed5")


def test_the_card_names_the_framings_of_each_augmentation():
    assert framings_sentence(AUGMENTATIONS["classic"]) == "; without the source framings"
    live = framings_sentence(AUGMENTATIONS["live"])
    for framing in ("aspect stretch", "tight crop from 224 px", "collimation borders", "random intensity network"):
        assert framing in live


def test_a_framing_drawn_with_probability_zero_is_not_named():
    params = {**AUGMENTATIONS["live"], "collimation": {**AUGMENTATIONS["live"]["collimation"], "p": 0.0}}
    assert "collimation" not in framings_sentence(params)
