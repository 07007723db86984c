"""Training pipeline: data preparation, pretrained weights, training, evaluation, export."""

import os

# TensorFlow reads this once, on import; set here, before any training module imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
