"""Grad-CAM by gradients (after the keras-io example): the reference the forward-pass class maps
are checked against, and the map of models without one. Training and benchmarks only."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

DEFAULT_LAST_CONV_LAYER = "mixed7"


def build_gradcam_model(model, last_conv_layer_name: str = DEFAULT_LAST_CONV_LAYER):
    """A model mapping the input to (last conv block activations, logits)."""
    return keras.Model(model.input, [model.get_layer(last_conv_layer_name).output, model.output])


def make_gradcam_heatmap(img_array: np.ndarray, grad_model, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM for one image: (1, S, S, 3) float model input -> (h, w) heatmap in [0, 1].

    class_index None means the predicted class.
    """
    with tf.GradientTape() as tape:
        conv_output, logits = grad_model(tf.convert_to_tensor(img_array, tf.float32), training=False)
        index = int(tf.argmax(logits[0])) if class_index is None else int(class_index)
        score = logits[:, index]
    grads = tape.gradient(score, conv_output)
    weights = tf.reduce_mean(grads, axis=(0, 1, 2))
    cam = tf.nn.relu(tf.reduce_sum(conv_output[0] * weights, axis=-1)).numpy()
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).astype(np.float32)
