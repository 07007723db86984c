"""The classifier: InceptionV3 trunk cut at a mixed block, global average pooling, dropout, logits."""

from __future__ import annotations

from pathlib import Path

from utils.preprocess import INPUT_SIZE

DEFAULT_CUT = "mixed7"
# Blocks below FROZEN_UNTIL keep their pretrained weights; the features there are cached.
DEFAULT_FROZEN_UNTIL = "mixed5"


def build_classifier(pretrained_weights: Path | None, cut: str = DEFAULT_CUT,
                     n_classes: int = 3, dropout: float = 0.3, seed: int = 0, size: int = INPUT_SIZE):
    """Flat functional model: float input (S, S, 3) in [0, 1] -> n_classes logits."""
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.InceptionV3(weights=None, include_top=False,
                                          input_shape=(size, size, 3))
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
    import keras

    boundary = model.get_layer(frozen_until).output
    trunk = keras.Model(model.input, boundary, name="frozen_trunk")
    tail = keras.Model(boundary, model.output, name="trainable_tail")
    trunk.trainable = False
    return trunk, tail
