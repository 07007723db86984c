"""Conversion of TF.js layers weights (uint8-quantized, browserify-wrapped) onto Keras layers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from training.pretrained import assign_tfjs_weights, dequantize, read_minjs_bundle


def tiny_keras_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(scale=False)(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(2, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization(scale=False)(x)
    return keras.Model(inputs, x)


def quantize(values: np.ndarray):
    low, high = float(values.min()), float(values.max())
    scale = (high - low) / 255 or 1.0
    q = np.round((values - low) / scale).astype(np.uint8)
    return q, {"min": low, "scale": scale, "dtype": "uint8"}


def tfjs_fixture(rng):
    """(model.json dict, weight buffer, original float tensors) shaped like nsfwjs' files."""
    layers = [{"name": "input_1", "class_name": "InputLayer", "config": {}},
              {"name": "conv2d_1", "class_name": "Conv2D", "config": {"use_bias": False}},
              {"name": "batch_normalization_1", "class_name": "BatchNormalization",
               "config": {"scale": False, "center": True}},
              {"name": "activation_1", "class_name": "Activation", "config": {}},
              {"name": "conv2d_2", "class_name": "Conv2D", "config": {"use_bias": False}},
              {"name": "batch_normalization_2", "class_name": "BatchNormalization",
               "config": {"scale": False, "center": True}},
              {"name": "dense_1", "class_name": "Dense", "config": {}}]
    originals = {
        "conv2d_1/kernel": rng.normal(size=(3, 3, 3, 4)), "conv2d_2/kernel": rng.normal(size=(1, 1, 4, 2)),
        "batch_normalization_1/beta": rng.normal(size=4),
        "batch_normalization_1/moving_mean": rng.normal(size=4),
        "batch_normalization_1/moving_variance": rng.uniform(0.5, 2, size=4),
        "batch_normalization_2/beta": rng.normal(size=2),
        "batch_normalization_2/moving_mean": rng.normal(size=2),
        "batch_normalization_2/moving_variance": rng.uniform(0.5, 2, size=2),
        "dense_1/kernel": rng.normal(size=(2, 5)),
    }
    specs, blobs = [], []
    for name in sorted(originals):  # TF.js manifests list weights by name
        q, quant = quantize(originals[name])
        specs.append({"name": name, "shape": list(originals[name].shape), "dtype": "float32",
                      "quantization": quant})
        blobs.append(q.tobytes())
    model_json = {"modelTopology": {"model_config": {"config": {"layers": layers}}},
                  "weightsManifest": [{"paths": ["group1-shard1of2", "group1-shard2of2"], "weights": specs}]}
    return model_json, b"".join(blobs), originals


def test_dequantize_and_assign_use_every_trunk_tensor():
    rng = np.random.default_rng(0)
    model_json, buffer, originals = tfjs_fixture(rng)
    tensors = dequantize(model_json["weightsManifest"][0]["weights"], buffer)
    model = tiny_keras_model()
    unused = assign_tfjs_weights(model_json, tensors, model)
    assert unused == ["dense_1/kernel"]
    kernel = model.layers[1].get_weights()[0]
    step = (originals["conv2d_1/kernel"].max() - originals["conv2d_1/kernel"].min()) / 255
    assert np.abs(kernel - originals["conv2d_1/kernel"]).max() <= step / 2 + 1e-6
    beta, mean, variance = model.layers[2].get_weights()
    assert np.abs(variance - originals["batch_normalization_1/moving_variance"]).max() < 0.01


def test_buffer_size_must_match_manifest():
    model_json, buffer, _ = tfjs_fixture(np.random.default_rng(1))
    with pytest.raises(ValueError, match="bytes"):
        dequantize(model_json["weightsManifest"][0]["weights"], buffer + b"\0")


def test_missing_and_leftover_trunk_tensors_are_errors():
    model_json, buffer, _ = tfjs_fixture(np.random.default_rng(2))
    tensors = dequantize(model_json["weightsManifest"][0]["weights"], buffer)
    missing = {k: v for k, v in tensors.items() if k != "conv2d_2/kernel"}
    with pytest.raises(ValueError, match="lack"):
        assign_tfjs_weights(model_json, missing, tiny_keras_model())
    extra = dict(tensors, **{"conv2d_9/kernel": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not used"):
        assign_tfjs_weights(model_json, extra, tiny_keras_model())


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_minjs_wrappers_are_read_with_node(tmp_path):
    import base64

    model_json, buffer, _ = tfjs_fixture(np.random.default_rng(3))
    wrapper = '!function(a){"object"==typeof exports&&"undefined"!=typeof module&&(module.exports=a())}' \
              '(function(){return %s});'
    (tmp_path / "model.min.js").write_text(wrapper % json.dumps(model_json))
    half = len(buffer) // 2
    for i, part in enumerate((buffer[:half], buffer[half:]), start=1):
        (tmp_path / f"group1-shard{i}of2.min.js").write_text(wrapper % json.dumps(base64.b64encode(part).decode()))
    read_json, read_buffer = read_minjs_bundle(tmp_path)
    assert read_buffer == buffer
    assert read_json["weightsManifest"] == model_json["weightsManifest"]
