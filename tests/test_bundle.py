"""The loader's integrity check: missing, altered or unreadable model files fail clearly."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from utils.core.bundle import ModelBundleError, load_bundle


def write_bundle(folder, payload: bytes, sha=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.keras").write_bytes(payload)
    metadata = {"model_file": "m.keras", "sha256": sha or hashlib.sha256(payload).hexdigest(),
                "classes": ["healthy", "fractured", "beyond_repair"], "temperature": 1.0,
                "presets": {"balanced": {"any_fracture_threshold": None, "min_confidence": 0.5}}}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_missing_metadata(tmp_path):
    with pytest.raises(ModelBundleError, match="No model metadata"):
        load_bundle(tmp_path)


def test_missing_model_file(tmp_path):
    folder = write_bundle(tmp_path / "b", b"weights")
    (folder / "m.keras").unlink()
    with pytest.raises(ModelBundleError, match="missing"):
        load_bundle(folder)


def test_altered_model_file(tmp_path):
    folder = write_bundle(tmp_path / "b", b"weights", sha=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ModelBundleError, match="does not match"):
        load_bundle(folder)


def test_matching_but_unreadable_file(tmp_path):
    folder = write_bundle(tmp_path / "b", b"not a keras archive")
    with pytest.raises(ModelBundleError, match="could not load"):
        load_bundle(folder)


def test_broken_metadata_json(tmp_path):
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ModelBundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_bundled_model_passes_and_a_flipped_byte_fails(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    assert bundle.classes == ("healthy", "fractured", "beyond_repair")
    assert bundle.metadata["size_bytes"] < 100 * 1024 * 1024
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    path = copy / bundle.metadata["model_file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="does not match"):
        load_bundle(copy)


def test_altered_guard_file_fails(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    assert bundle.guard is not None
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    path = copy / bundle.metadata["guard"]["file"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelBundleError, match="guard file"):
        load_bundle(copy)
