"""The cheaper-network probe: the shipped weights rebuilt at another input size are the shipped
model (same answers at the shipped size), the probe reads each cut's pooled features, and the
logistic head's strength is chosen on validation."""

from __future__ import annotations

import numpy as np

from training.studies.cheaper_network import REGULARISATION, fit_head, probe_outputs, resized_model
from utils.core.bundle import load_bundle
from utils.core.inference import to_model_input


def test_the_shipped_weights_rebuilt_at_a_size_are_the_shipped_model_there(bundle_dir):
    bundle = load_bundle(bundle_dir, load_keras=True)
    rng = np.random.default_rng(0)
    films = (rng.random((2, bundle.input_size, bundle.input_size)) * 255).astype(np.uint8)
    x = to_model_input(films[..., None])
    same = resized_model(bundle.model, bundle.input_size)
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(bundle.model(x)), atol=1e-4)
    probe = probe_outputs(resized_model(bundle.model, 320), ["mixed7", "mixed6"])
    out = probe(to_model_input(films[:, :320, :320, None]))
    assert out["logits"].shape == (2, 3) and out["mixed7"].shape == (2, 768) and out["mixed6"].shape == (2, 768)


def test_the_head_is_chosen_on_validation():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(200, 5))
    train_labels = train[:, 0] + 0.5 * rng.normal(size=200) > 0
    val = rng.normal(size=(100, 5))
    val_labels = val[:, 0] > 0
    auroc, c, head = fit_head(train, train_labels, val, val_labels)
    assert c in REGULARISATION and auroc > 0.9
    flipped_auroc, _, _ = fit_head(train, train_labels, val, ~val_labels)
    assert flipped_auroc < 0.5  # what is chosen is measured on the validation labels given
