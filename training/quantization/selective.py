"""Dynamic-range int8 with a denylist: chosen convolutions keep their float32 weights.

LiteRT's converter has no denylist for dynamic-range quantization (its debugger's denylists
apply to full-integer models only). Both conversions come from one exported graph, so each
tensor has the same name in the float32 and the int8 flatbuffer: `keep_float` copies the
float32 kernel of each denylisted convolution over its int8 one, and the op then runs in float
(a convolution whose kernel is float is a float convolution; one whose kernel is int8 quantizes
its input on the fly). Every other op stays as the converter made it.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from training.litert import saved_serving_model

# The stem's second convolution, the first one the converter quantizes: its input (the first
# convolution's activations, at the largest size in the network) quantized on the fly causes
# about 40 % of the int8 engine's error in P(any fracture) on validation films, for 4 % of the
# multiply-adds (docs/experiments.md).
DEFAULT_FLOAT_LAYERS = ("conv2d_1",)
CONVOLUTIONS = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D}
# "serving_1/conv2d_1_2/convolution" is the kernel of the Keras layer "conv2d_1": the export
# prefixes the model's name and adds one "_<n>" to every layer name it uniquifies.
KERNEL_NAME = re.compile(r"^[^/]+/(?P<layer>.+)_\d+/convolution$")


def layer_of(tensor_name: str) -> str | None:
    match = KERNEL_NAME.match(tensor_name)
    return match.group("layer") if match else None


def int8_kernels(model) -> dict[str, int]:
    """{Keras layer name: tensor index} of every convolution whose kernel is int8."""
    graph = model.subgraphs[0]
    codes = [code.builtinCode for code in model.operatorCodes]
    found = {}
    for op in graph.operators:
        if codes[op.opcodeIndex] not in CONVOLUTIONS:
            continue
        kernel = graph.tensors[op.inputs[1]]
        layer = layer_of(kernel.name.decode())
        if kernel.type == schema.TensorType.INT8 and layer is not None:
            found[layer] = int(op.inputs[1])
    return found


def kernels_by_name(model) -> dict[str, int]:
    return {tensor.name.decode(): index for index, tensor in enumerate(model.subgraphs[0].tensors)}


def keep_float(int8_model, float_model, layers: Iterable[str]) -> None:
    """Give each named layer's convolution in int8_model (flatbuffer object API) the float32
    kernel of the same tensor in float_model. Refuses a name that is not an int8 convolution."""
    quantized, floats = int8_kernels(int8_model), kernels_by_name(float_model)
    for layer in layers:
        if layer not in quantized:
            raise ValueError(f"{layer} is not an int8 convolution of this model")
        target = int8_model.subgraphs[0].tensors[quantized[layer]]
        source = float_model.subgraphs[0].tensors[floats[target.name.decode()]]
        if list(source.shape) != list(target.shape) or source.type != schema.TensorType.FLOAT32:
            raise ValueError(f"{layer}: the float32 kernel does not match the int8 one")
        int8_model.buffers[target.buffer].data = np.array(float_model.buffers[source.buffer].data, np.uint8)
        target.type, target.quantization = schema.TensorType.FLOAT32, None


def convert_selective(keras_path: Path, out_path: Path, float_layers: Iterable[str]) -> Path:
    """The bundle's serving graph as dynamic-range int8 with float_layers' convolutions in float."""
    import tensorflow as tf  # noqa: PLC0415  (only the conversion needs it)

    with tempfile.TemporaryDirectory() as tmp:
        converter = saved_serving_model(keras_path, tmp)
        float_bytes = converter.convert()
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        int8_bytes = converter.convert()
    int8_model = flatbuffer_utils.convert_bytearray_to_object(bytearray(int8_bytes))
    keep_float(int8_model, flatbuffer_utils.convert_bytearray_to_object(bytearray(float_bytes)), float_layers)
    out_path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(int8_model)))
    return out_path
