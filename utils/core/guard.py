"""Not-an-X-ray guard: does this input look like the radiographs the model was trained on?

Two checks, cheapest first:
1. `screen_decoded`: colour photos and blank/flat images are caught from the decoded pixels.
2. A guard on the model's penultimate features (global average pool), one of:
   - `RadiographGuard`: a linear classifier trained on radiographs of every training source
     (and their augmented views, and chest films from another hospital) against things that
     are not radiographs; it answers "is this a radiograph?";
   - `FeatureGuard` (older bundles): the distance from the training radiographs' class means
     under their shared covariance (Lee et al., 2018). It measures "unlike the training
     films", so real films from other hospitals trip it too; its message says so.

The fitted statistics live beside the model (`radiograph_guard.npz`, or `ood_guard.npz` in older
bundles; its sha256 in metadata.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Cheap-check limits, set from the training split: its largest colour fraction is 0.388 (a web
# figure with coloured annotations) and its smallest range 0.306; training/trust.py re-measures
# both and the model card reports how many training images each check would catch (none).
MAX_COLOUR_FRACTION = 0.40
MIN_DYNAMIC_RANGE = 0.05
RANGE_PERCENTILES = (1.0, 99.0)

COLOUR_MESSAGE = (
    "This looks like a colour photo ({share:.0%} of pixels are clearly coloured), not a "
    "radiograph; the verdict is not reliable."
)
FLAT_MESSAGE = "The image is almost uniform (no visible structure); the verdict is not reliable."
FEATURE_MESSAGE = (
    "This image is unlike the films the model was trained on (another framing, exposure or "
    "hospital, or not a radiograph at all); a reader should decide."
)
NOT_RADIOGRAPH_MESSAGE = (
    "This does not look like a radiograph (a photo, document, drawing or screenshot); the verdict is not reliable."
)


def dynamic_range(pixels: np.ndarray) -> float:
    """Spread between the 1st and 99th percentile of a [0, 1] grayscale image (subsampled)."""
    step = max(1, int(np.ceil(max(pixels.shape) / 512)))
    low, high = np.percentile(pixels[::step, ::step], RANGE_PERCENTILES)
    return float(high - low)


def screen_decoded(pixels: np.ndarray, colour_share: float) -> str | None:
    """A message when the decoded image is plainly not a radiograph, else None."""
    if colour_share > MAX_COLOUR_FRACTION:
        return COLOUR_MESSAGE.format(share=colour_share)
    if dynamic_range(pixels) < MIN_DYNAMIC_RANGE:
        return FLAT_MESSAGE
    return None


def is_confident_not_radiograph(message: str | None) -> bool:
    """True for the flags that say "not a radiograph" (colour photo, blank, the radiograph
    guard); False for "unlike the training films" and for no flag."""
    return message is not None and message != FEATURE_MESSAGE


@dataclass(frozen=True)
class RadiographGuard:
    """P(not a radiograph) from standardised features through a logistic layer; above
    `threshold` means not a radiograph."""

    mean: np.ndarray  # (D,) float32
    scale: np.ndarray  # (D,) float32
    weights: np.ndarray  # (D,) float32
    bias: float
    threshold: float
    message = NOT_RADIOGRAPH_MESSAGE

    def distance(self, features: np.ndarray) -> np.ndarray:
        """P(not a radiograph) of each row (named like FeatureGuard's score)."""
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weights.astype(np.float64) + self.bias)))

    def is_outlier(self, features: np.ndarray) -> np.ndarray:
        return self.distance(features) > self.threshold

    def save(self, path: Path) -> None:
        np.savez(
            path,
            kind="radiograph",
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            weights=self.weights.astype(np.float32),
            bias=np.float64(self.bias),
            threshold=np.float64(self.threshold),
        )


def load_guard(path: Path) -> RadiographGuard | FeatureGuard:
    """The guard saved at path: a RadiographGuard or (older bundles) a FeatureGuard."""
    with np.load(path) as data:
        if "kind" in data.files and str(data["kind"]) == "radiograph":
            return RadiographGuard(
                data["mean"], data["scale"], data["weights"], float(data["bias"]), float(data["threshold"])
            )
    return FeatureGuard.load(path)


@dataclass(frozen=True)
class FeatureGuard:
    class_means: np.ndarray  # (C, D) float32
    precision: np.ndarray  # (D, D) float32, inverse of the shared (shrunk) covariance
    threshold: float  # distances above it are out of distribution
    message = FEATURE_MESSAGE

    def distance(self, features: np.ndarray) -> np.ndarray:
        return mahalanobis_distance(features, self.class_means, self.precision)

    def is_outlier(self, features: np.ndarray) -> np.ndarray:
        return self.distance(features) > self.threshold

    def save(self, path: Path) -> None:
        np.savez(
            path,
            class_means=self.class_means.astype(np.float32),
            precision=self.precision.astype(np.float32),
            threshold=np.float64(self.threshold),
        )

    @classmethod
    def load(cls, path: Path) -> FeatureGuard:
        with np.load(path) as data:
            return cls(data["class_means"], data["precision"], float(data["threshold"]))


def mahalanobis_distance(features: np.ndarray, class_means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N, D) features -> (N,) distance to the nearest class mean under a shared precision."""
    features = np.asarray(features, dtype=np.float64)
    best = np.full(len(features), np.inf)
    for mean in np.asarray(class_means, dtype=np.float64):
        diff = features - mean
        squared = np.einsum("nd,de,ne->n", diff, precision.astype(np.float64), diff)
        best = np.minimum(best, squared)
    return np.sqrt(np.maximum(best, 0.0))
