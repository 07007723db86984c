"""The classifier: InceptionV3 trunk cut at a mixed block, global average pooling, dropout, logits."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from training.backbones import BACKBONES
from utils.core.preprocess import INPUT_SIZE

DEFAULT_CUT = "mixed7"
# Blocks below FROZEN_UNTIL keep their pretrained weights; the features there are cached.
DEFAULT_FROZEN_UNTIL = "mixed5"


def build_classifier(
    pretrained_weights: Path | None,
    cut: str = DEFAULT_CUT,
    n_classes: int = 3,
    dropout: float = 0.3,
    seed: int = 0,
    size: int = INPUT_SIZE,
):
    """Flat functional model: float input (S, S, 3) in [0, 1] -> n_classes logits."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(size, size, 3))
    if pretrained_weights is not None:
        base.load_weights(pretrained_weights)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base.get_layer(cut).output)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(n_classes, name="logits")(x)
    return keras.Model(base.input, logits, name=f"bone_xray_inception_v3_{cut}")


def split_at(model, frozen_until: str = DEFAULT_FROZEN_UNTIL):
    """(frozen trunk up to frozen_until, trainable tail from there to the logits).

    Both share layers with `model`, so training the tail trains the full model.
    """
    # frozen_until "input" (the model's input layer): nothing is frozen (a model from scratch).
    boundary = model.input if frozen_until == "input" else model.get_layer(frozen_until).output
    trunk = keras.Model(model.input, boundary, name="frozen_trunk")
    tail = keras.Model(boundary, model.output, name="trainable_tail")
    trunk.trainable = False
    return trunk, tail


# Two-stage head with a fracture map: P(any fracture) from the last block's pooled
# features plus the max and mean of a per-cell fracture map (one small fracture can carry the
# image), and P(beyond_repair | fracture) from the pooled features alone. The three class
# log-probabilities are a fixed linear map of the two stages' log-probabilities:
#   log P(healthy)       = log(1 - pf)
#   log P(fractured)     = log pf + log(1 - ps)
#   log P(beyond_repair) = log pf + log ps
COMPOSE_KERNEL = (
    (1.0, 0.0, 0.0),  # log(1 - pf)
    (0.0, 1.0, 1.0),  # log pf
    (0.0, 1.0, 0.0),  # log(1 - ps)
    (0.0, 0.0, 1.0),
)  # log ps
STAGE_OUTPUTS = ("fracture_logit", "severity_logit", "localisation_logit")


def build_two_stage_classifier(
    pretrained_weights: Path | None,
    cut: str = DEFAULT_CUT,
    dropout: float = 0.3,
    seed: int = 0,
    size: int = INPUT_SIZE,
    backbone: str = "inception_v3",
):
    """Flat functional model: float input (S, S, 3) in [0, 1] -> the 3 classes' log-probabilities
    (named `logits`: softmax of them gives the probabilities back). Built from stock Keras
    layers only, so the .keras file loads and converts to LiteRT without custom code.

    backbone: "inception_v3" (the shipped one: keras.applications, cut at `cut`), or, for the
    architecture comparison, "small_cnn" (from scratch) and "efficientnet_lite2" (ImageNet
    weights converted by training.backbones); `pretrained_weights` is that backbone's file.

    Layers the training and serving code reach by name: `localisation_logit` (h, w, 1; its
    sigmoid is the per-cell fracture probability), `fracture_logit`, `severity_logit`, `pool`
    (the guard's features).
    """
    keras.utils.set_random_seed(seed)
    if backbone == "inception_v3":
        base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(size, size, 3))
        if pretrained_weights is not None:
            base.load_weights(pretrained_weights)
        inputs, conv = base.input, base.get_layer(cut).output
    else:
        inputs, conv = BACKBONES[backbone](size, pretrained_weights)
    return two_stage_head(inputs, conv, dropout, name=f"bone_xray_{backbone}_two_stage")


def two_stage_head(inputs, conv, dropout: float, name: str):
    """The fracture map, the two stages and their composition on a backbone's last feature map."""
    cell_logits = layers.Conv2D(1, 1, name="localisation_logit", bias_initializer=keras.initializers.Constant(-4.0))(
        conv
    )
    pooled = layers.Dropout(dropout, name="dropout")(layers.GlobalAveragePooling2D(name="pool")(conv))
    evidence = layers.Concatenate(name="evidence")(
        [
            pooled,
            layers.GlobalMaxPooling2D(name="cell_max")(cell_logits),
            layers.GlobalAveragePooling2D(name="cell_mean")(cell_logits),
        ]
    )
    fracture = layers.Dense(1, name="fracture_logit")(evidence)
    severity = layers.Dense(1, name="severity_logit")(pooled)

    def stage_log_probabilities(logit, stage):
        zero = layers.Rescaling(0.0, name=f"{stage}_zero")(logit)
        return layers.Activation("log_softmax", name=f"{stage}_log_p")(
            layers.Concatenate(name=f"{stage}_pair")([zero, logit])
        )

    stages = layers.Concatenate(name="stages")(
        [stage_log_probabilities(fracture, "fracture"), stage_log_probabilities(severity, "severity")]
    )
    compose = layers.Dense(3, use_bias=False, trainable=False, name="logits")
    log_probs = compose(stages)
    compose.set_weights([np.array(COMPOSE_KERNEL, dtype=np.float32)])
    model = keras.Model(inputs, log_probs, name=name)
    # Start the map's max and mean with a positive say in the fracture score.
    kernel, bias = model.get_layer("fracture_logit").get_weights()
    kernel[-2:] = 0.5
    model.get_layer("fracture_logit").set_weights([kernel, bias])
    return model


def two_stage_probabilities(p_fracture: np.ndarray, p_severe: np.ndarray) -> np.ndarray:
    """The composition the model computes, in numpy: (N,) P(any fracture), (N,) P(beyond_repair |
    fracture) -> (N, 3) class probabilities that sum to 1."""
    p_fracture, p_severe = np.asarray(p_fracture, np.float64), np.asarray(p_severe, np.float64)
    return np.stack([1 - p_fracture, p_fracture * (1 - p_severe), p_fracture * p_severe], axis=-1)


def training_view(model, frozen_until: str = DEFAULT_FROZEN_UNTIL):
    """(frozen trunk up to frozen_until, trainable tail: boundary -> the stage logits and the map)."""
    # frozen_until "input" (the model's input layer): nothing is frozen (a model from scratch).
    boundary = model.input if frozen_until == "input" else model.get_layer(frozen_until).output
    trunk = keras.Model(model.input, boundary, name="frozen_trunk")
    tail = keras.Model(
        boundary, {name: model.get_layer(name).output for name in STAGE_OUTPUTS + ("logits",)}, name="trainable_tail"
    )
    trunk.trainable = False
    return trunk, tail
