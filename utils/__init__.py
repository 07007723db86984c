"""Bone X-ray Classifier: decoding, preprocessing, model loading, inference and CLI."""
