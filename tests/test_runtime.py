"""Serving engines: the LiteRT file and the Keras model give the same outputs; serving
never imports TensorFlow when the LiteRT file is there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, png_bytes, synthetic_radiograph
from utils.core.bundle import ModelBundleError, load_bundle
from utils.core.classifier import Classifier
from utils.core.preprocess import INPUT_SIZE


def test_litert_and_keras_engines_agree(classifier, bundle_dir):
    from utils.core.engines import KerasEngine

    assert classifier.engine.name == "litert"
    keras_classifier = Classifier(classifier.bundle, engine=KerasEngine(classifier.bundle.model))
    batch = np.stack([(synthetic_radiograph(INPUT_SIZE, INPUT_SIZE, seed=s) * 255).astype(np.uint8)[..., None] for s in range(4)])
    fast, reference = classifier.forward(batch), keras_classifier.forward(batch)
    np.testing.assert_allclose(classifier.probabilities(batch), keras_classifier.probabilities(batch), atol=1e-4)
    np.testing.assert_allclose(fast["features"], reference["features"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fast["heatmaps"], reference["heatmaps"], atol=1e-3)
    recorded = classifier.bundle.metadata["runtime"]["test_split_agreement"]
    assert recorded["n"] >= 700 and recorded["max_abs_probability_difference"] <= 0.01


def test_batches_of_any_size_give_the_same_answers(classifier):
    images = [(f"{s}.png", png_bytes((synthetic_radiograph(seed=s) * 255).astype(np.uint8))) for s in range(5)]
    one_by_one = [classifier.predict_bytes(*item).probabilities for item in images]
    batched = [p.probabilities for p in classifier.predict_many(images, batch_size=3)]
    for a, b in zip(one_by_one, batched):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_serving_does_not_import_tensorflow(bundle_dir, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes((synthetic_radiograph() * 255).astype(np.uint8)))
    script = ("import sys; from utils.core.bundle import load_bundle; from utils.core.classifier import Classifier; "
              "c = Classifier(load_bundle(sys.argv[1])); p = c.predict_bytes('x', open(sys.argv[2], 'rb').read()); "
              "print(c.engine.name, p.label, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script, str(bundle_dir), str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    engine, label, tf_imported, keras_imported = out.split()[-4:]
    assert engine == "litert" and label in ("healthy", "fractured", "beyond_repair")
    assert tf_imported == "False" and keras_imported == "False"


def test_bundle_without_litert_file_falls_back_to_keras(bundle_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    (copy / metadata.pop("runtime")["file"]).unlink()
    (copy / "metadata.json").write_text(json.dumps(metadata))
    classifier = Classifier(load_bundle(copy))
    assert classifier.engine.name == "keras"
    assert classifier.predict_bytes("x.png", png_bytes((synthetic_radiograph() * 255).astype(np.uint8))).label


def test_altered_litert_file_fails(bundle_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    path = copy / json.loads((copy / "metadata.json").read_text())["runtime"]["file"]
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelBundleError, match="LiteRT file"):
        load_bundle(copy)


def test_the_int8_engine_passed_its_check_and_serves_the_same_verdicts(bundle_dir):
    """The bundled int8 engine is recorded with a passing equivalence check, and on synthetic
    films it gives the float32 engine's verdicts with close probabilities."""
    bundle = load_bundle(bundle_dir, load_keras=False)
    if "int8" not in bundle.litert_paths:
        pytest.skip("this bundle ships no int8 engine")
    served = bundle.metadata["runtime_int8"]
    assert served["equivalence"][served["candidate"]]["passed"] is True
    card = (bundle_dir / "MODEL_CARD.md").read_text()
    assert all(f"`{layer}`" in card for layer in served["denylist"])  # the denylist is in the card too
    exact, fast = Classifier(bundle), Classifier(bundle, precision="int8")
    assert fast.engine.name == "litert" and fast.temperature == bundle.metadata["runtime_int8"]["temperature"]
    films = [("f.png", png_bytes((synthetic_radiograph(300, 260, seed=s) * 255).astype(np.uint8))) for s in range(6)]
    for a, b in zip(exact.predict_many(films), fast.predict_many(films)):
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) < 0.1
    # The faster engine is the CLI's default for batch work.
    from utils.cli import default_precision

    assert default_precision(bundle_dir) == "int8"


def test_altered_int8_file_fails(bundle_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    if "runtime_int8" not in metadata:
        pytest.skip("this bundle ships no int8 engine")
    path = copy / metadata["runtime_int8"]["file"]
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelBundleError, match="int8 LiteRT file"):
        load_bundle(copy)

