"""Training pipeline: data preparation, pretrained weights, training, evaluation, export."""
