"""Fit the radiograph guard: "is this a radiograph?", answered by a linear classifier on the
model's pooled features.

Radiographs: training-split films of every source (FracAtlas, Bone Break), live-augmentation
views of them (other framings, exposures, annotations), and chest films from another hospital
(chest_kermany/, the fitting half of its patients). Not radiographs: photographs, textures,
documents, flat images, drawings, screenshots and CT/MRI-like slices, made on the spot
(training.non_radiographs, a seed of their own). The threshold keeps the validation films'
false flags at or below MAX_VAL_FLAGGED. Nothing is fitted on knee_oai/, wrist_check/ or
hbfmid_check/; the other half of the chest patients and a fresh seed of non-radiographs
measure it.

Usage: python -m training.radiograph_guard --run artifacts/RUN   (writes RUN/guard/)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from training.augment import random_view
from training.data import read_split, run_step_parser
from training.features import build_image_cache
from training.non_radiographs import EXTRA_KINDS, KINDS, make_non_radiographs
from training.offsource import check_rows
from training.offsource_report import classifier_for_run
from utils.core.classifier import prepare_input
from utils.core.guard import RadiographGuard

FIT_SEED = 20261201  # the non-radiographs the guard learns from; measured on another seed
MEASURE_SEED = 20261126  # the model card's non-radiograph set (training.trust)
TRAIN_FILMS, VIEWS, CHEST_FILMS, NON_RADIOGRAPHS = 1200, 1200, 600, 840
MAX_VAL_FLAGGED = 0.01
GUARD_FILE = "radiograph_guard.npz"


def chest_halves(data_dir: Path) -> tuple[list[dict], list[dict]]:
    """chest_kermany rows split by patient (a hash of the id): (fitting half, measuring half)."""
    rows = check_rows(data_dir, "chest_kermany")
    fit = [r for r in rows if int(hashlib.sha256(r["patient_id"].encode()).hexdigest(), 16) % 2 == 0]
    measure = [r for r in rows if int(hashlib.sha256(r["patient_id"].encode()).hexdigest(), 16) % 2 == 1]
    return fit, measure


def features_of(classifier, images: np.ndarray, batch: int = 32) -> np.ndarray:
    out = [classifier.logits_and_features(images[i : i + batch, ..., None])[1] for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def inputs_of(items: list[tuple[str, bytes]], size: int) -> np.ndarray:
    """Model inputs of encoded images through the serving decode + preprocess (unreadable ones dropped)."""
    prepared = [prepare_input(name, data, size) for name, data in items]
    return np.stack([p.model_input for p in prepared if p.model_input is not None])


def chest_items(rows: list[dict]) -> list[tuple[str, bytes]]:
    return [(r["path"], Path(r["file"]).read_bytes()) for r in rows]


def fit_guard(radiographs: np.ndarray, others: np.ndarray, val_radiographs: np.ndarray) -> RadiographGuard:
    """A balanced logistic regression on standardised features; threshold from validation."""
    x = np.concatenate([radiographs, others]).astype(np.float64)
    y = np.r_[np.zeros(len(radiographs)), np.ones(len(others))]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=0.05, class_weight="balanced", max_iter=5000).fit((x - mean) / scale, y)
    guard = RadiographGuard(
        mean.astype(np.float32),
        scale.astype(np.float32),
        model.coef_[0].astype(np.float32),
        float(model.intercept_[0]),
        0.5,
    )
    val_scores = guard.distance(val_radiographs)
    threshold = max(0.5, float(np.quantile(val_scores, 1 - MAX_VAL_FLAGGED)))
    return RadiographGuard(guard.mean, guard.scale, guard.weights, guard.bias, threshold)


def fit_and_measure(classifier, data_dir: Path, split_file: Path, cache_dir: Path, seed: int = 0) -> tuple:
    """The radiograph guard fitted on training films, their views and chest films against made-up
    non-radiographs, then measured on films and non-radiographs it never saw."""
    size = classifier.bundle.input_size
    rows = read_split(split_file)
    rng = np.random.default_rng(seed)
    train_ids = [i for i, r in enumerate(rows) if r["split"] == "train"]
    train = [rows[i] for i in sorted(rng.permutation(train_ids)[:TRAIN_FILMS])]
    val = [r for r in rows if r["split"] == "val"]
    test = [r for r in rows if r["split"] == "test"]
    train_images = build_image_cache(train, data_dir, cache_dir)
    views = np.stack(
        [
            random_view(train_images[i % len(train_images)], None, np.random.default_rng([seed, i]))[0]
            for i in range(VIEWS)
        ]
    )
    chest_fit, chest_measure = chest_halves(data_dir)
    chest_fit = chest_fit[:CHEST_FILMS]
    radiographs = np.concatenate(
        [
            features_of(classifier, train_images),
            features_of(classifier, views),
            features_of(classifier, inputs_of(chest_items(chest_fit), size)),
        ]
    )
    made_up = make_non_radiographs(NON_RADIOGRAPHS, FIT_SEED, KINDS + EXTRA_KINDS)
    others = features_of(classifier, inputs_of([(n, b) for n, _, b in made_up], size))
    val_features = features_of(classifier, build_image_cache(val, data_dir, cache_dir))
    guard = fit_guard(radiographs, others, val_features)
    flagged = {
        "validation_films": float(guard.is_outlier(val_features).mean()),
        **unseen_flag_rates(guard, classifier, build_image_cache(test, data_dir, cache_dir), chest_measure[:600]),
    }
    report = {
        "method": "logistic regression on standardised pooled features: radiographs (training films, "
        "augmented views, chest films of another hospital) against non-radiographs",
        "fitted_on": {
            "training_films": len(train),
            "augmented_views": VIEWS,
            "chest_films": len(chest_fit),
            "non_radiographs": NON_RADIOGRAPHS,
            "non_radiograph_kinds": list(KINDS + EXTRA_KINDS),
            "non_radiograph_seed": FIT_SEED,
        },
        "threshold": guard.threshold,
        "max_val_flagged": MAX_VAL_FLAGGED,
        "flagged": flagged,
    }
    return guard, report


def unseen_flag_rates(guard, classifier, test_images: np.ndarray, chest_rows: list) -> dict:
    """Shares the guard flags among what it never learnt from: test films, held-out chest films
    of another hospital, the model card's non-radiographs and drawings, screenshots, CT-like slices."""
    size = classifier.bundle.input_size

    def rate(inputs: np.ndarray) -> float:
        return float(guard.is_outlier(features_of(classifier, inputs)).mean())

    def made_up(count: int, kinds: tuple[str, ...] = KINDS) -> np.ndarray:
        return inputs_of([(n, b) for n, _, b in make_non_radiographs(count, MEASURE_SEED, kinds)], size)

    return {
        "test_films": rate(test_images),
        "chest_films_held_out": rate(inputs_of(chest_items(chest_rows), size)),
        "non_radiographs_model_card_set": rate(made_up(80)),
        "drawings_screenshots_ct_like": rate(made_up(60, EXTRA_KINDS)),
    }


def main(argv=None) -> dict:
    args = run_step_parser(__doc__.splitlines()[0], out=False).parse_args(argv)
    report = guard_run(args.run, args.data_dir, args.split, args.cache_dir)
    print(json.dumps(report, indent=1))
    return report


def guard_run(run: Path, data_dir: Path, split_file: Path, cache_dir: Path) -> dict:
    """Fit and measure the radiograph guard of a run; writes RUN/guard/ (the guard and guard.json)."""
    guard, report = fit_and_measure(classifier_for_run(run), data_dir, split_file, cache_dir)
    out = run / "guard"
    out.mkdir(parents=True, exist_ok=True)
    guard.save(out / GUARD_FILE)
    (out / "guard.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
