"""Fitting the feature-distance guard (scikit-learn, a training dependency); serving only loads it."""

from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf

from utils.core.guard import FeatureGuard, mahalanobis_distance


def fit_feature_guard(
    features: np.ndarray, labels: np.ndarray, val_features: np.ndarray, val_quantile: float
) -> FeatureGuard:
    """Class means and a Ledoit-Wolf shared covariance from training features; the threshold
    is the `val_quantile` quantile of the validation radiographs' distances."""
    features = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
    precision = np.linalg.inv(covariance)
    threshold = float(np.quantile(mahalanobis_distance(val_features, means, precision), val_quantile))
    return FeatureGuard(means.astype(np.float32), precision.astype(np.float32), threshold)
