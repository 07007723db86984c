"""LiteRT's dynamic-range int8 arithmetic, simulated in float so that training can see it.

The dynamic-range converter stores the kernel of every convolution with at least
MIN_QUANTIZED_ELEMENTS weights as int8, one symmetric scale per output channel, and XNNPACK
quantizes that convolution's input on the fly: asymmetric int8, one scale and zero point per
image. `fake_quantized_clone` rebuilds a model with each such Conv2D replaced by one that rounds
its kernel and its input the same way in the forward pass and lets gradients through unchanged
(the straight-through estimator). Batch normalisation stays a separate layer here; the
converter folds it into the kernel, which changes each output channel's scale by one factor,
so the per-channel rounding of the folded kernel is the same rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import keras
import tensorflow as tf

# The converter's default: smaller weight tensors stay float (the 1 x 1 fracture map, the dense heads).
MIN_QUANTIZED_ELEMENTS = 1024


def straight_through(x: tf.Tensor, rounded: tf.Tensor) -> tf.Tensor:
    """`rounded` in the forward pass, the identity's gradient in the backward pass."""
    return x + tf.stop_gradient(rounded - x)


def quantize_kernel(kernel: tf.Tensor) -> tf.Tensor:
    """Symmetric int8 per output channel (the last axis), as the converter stores it."""
    axes = list(range(len(kernel.shape) - 1))
    scale = tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes, keepdims=True), 1e-12) / 127.0
    return straight_through(kernel, tf.clip_by_value(tf.round(kernel / scale), -127.0, 127.0) * scale)


def quantize_input(x: tf.Tensor) -> tf.Tensor:
    """Asymmetric int8 per image with zero exactly representable, as XNNPACK's dynamic kernels do."""
    axes = list(range(1, len(x.shape)))
    low = tf.minimum(tf.reduce_min(x, axis=axes, keepdims=True), 0.0)
    high = tf.maximum(tf.reduce_max(x, axis=axes, keepdims=True), 0.0)
    scale = tf.maximum(high - low, 1e-12) / 255.0
    zero_point = tf.round(-low / scale) - 128.0
    q = tf.clip_by_value(tf.round(x / scale) + zero_point, -128.0, 127.0)
    return straight_through(x, (q - zero_point) * scale)


class FakeQuantConv2D(keras.layers.Conv2D):
    """A Conv2D whose forward pass sees its kernel and input as the int8 engine does."""

    def call(self, inputs):
        outputs = tf.nn.convolution(
            quantize_input(inputs),
            quantize_kernel(self.kernel),
            strides=list(self.strides),
            padding=self.padding.upper(),
            dilations=list(self.dilation_rate),
        )
        if self.use_bias:
            outputs = outputs + self.bias
        return self.activation(outputs) if self.activation is not None else outputs


def is_quantized(layer: Any) -> bool:
    """Does the dynamic-range converter store this layer's kernel as int8?"""
    return isinstance(layer, keras.layers.Conv2D) and math.prod(layer.kernel.shape) >= MIN_QUANTIZED_ELEMENTS


def clone_with(model: keras.Model, kind_of: Callable[[Any], type[keras.layers.Layer]]) -> keras.Model:
    """The model rebuilt with each layer as kind_of(layer) (same config), its weights copied."""
    twin = keras.models.clone_model(model, clone_function=lambda layer: kind_of(layer).from_config(layer.get_config()))
    twin.set_weights(model.get_weights())
    return twin


def fake_quantized_clone(model: keras.Model, float_layers: Collection[str] = ()) -> keras.Model:
    """The model with every int8 convolution simulated (those named in float_layers stay
    float, as training.quantization.selective keeps them), its weights copied from `model`."""

    def kind_of(layer: Any) -> type[keras.layers.Layer]:
        simulated = is_quantized(layer) and layer.name not in float_layers
        return FakeQuantConv2D if simulated else layer.__class__

    return clone_with(model, kind_of)


def plain_clone(model: keras.Model) -> keras.Model:
    """The model with each FakeQuantConv2D a plain Conv2D again (what is saved and converted)."""
    return clone_with(
        model, lambda layer: keras.layers.Conv2D if isinstance(layer, FakeQuantConv2D) else layer.__class__
    )
