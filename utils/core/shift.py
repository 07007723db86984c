"""How unlike the training films a film is, on the model's own features: the shift score.

The score is the cosine distance from a film's penultimate features to its k-th nearest
neighbour among the training films and their augmented views (deep nearest neighbours, Sun et
al., ICML 2022). It needs no labels and no assumption about the shape of the feature cloud.
Its threshold is a quantile of the validation films' scores: above it, the model cannot vouch
for its answer and the verdict needs review ("unlike_training_films").

This is not the radiograph guard (utils.core.guard): a film far from the training films may
well be a radiograph, from another hospital, age or framing. The fitted bank lives beside the
model (`shift_score.npz`, its sha256 in metadata.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Bank rows scored at once: (chunk x bank) similarities stay a few MB.
SCORE_CHUNK = 64


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (float32); an all-zero row stays zero."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class ShiftScore:
    bank: np.ndarray  # (M, D) unit-length features of the training films and their views
    k: int  # which neighbour's distance is the score
    threshold: float  # scores above it: unlike the training films

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) cosine distance to the k-th nearest bank row."""
        x = unit_rows(np.atleast_2d(features))
        bank = self.bank.astype(np.float32, copy=False)
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), SCORE_CHUNK):
            similarity = x[start : start + SCORE_CHUNK] @ bank.T
            kth = np.partition(-similarity, self.k - 1, axis=1)[:, self.k - 1]
            out[start : start + SCORE_CHUNK] = 1.0 + kth  # 1 - (k-th largest similarity)
        return out

    def is_unlike(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    def save(self, path: Path) -> None:
        np.savez(path, kind="knn_cosine", bank=self.bank.astype(np.float16), k=self.k, threshold=self.threshold)

    @classmethod
    def load(cls, path: Path) -> ShiftScore:
        with np.load(path) as data:
            if str(data["kind"]) != "knn_cosine":
                raise ValueError(f"{path} holds a {data['kind']} score; expected knn_cosine")
            return cls(data["bank"].astype(np.float32), int(data["k"]), float(data["threshold"]))
