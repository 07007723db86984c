"""What the review rules are fitted and measured on: every film's serving-path outputs, once.

For each group of films (the training split with one augmented view of each, validation, test,
the three unseen-source checks and a few hundred chest films) this runs the bundle's serving
engine on the film and on its mirror image and saves, per film: the decoded size, the logits of
both views, the penultimate features, and what the cheap screens said. Fitting (training films),
thresholds (validation films) and reporting (the rest) then cost no forward pass.

Usage: python -m training.review.features --out artifacts/review_features [--limit N]
           [--bundle-dir model] [--data-dir DIR] [--split FILE]
Writes <out>/<group>.npz; a group already written is skipped, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.augment import random_view
from training.data import DEFAULT_SPLIT_FILE, default_data_dir, read_split
from training.offsource import CHECK_FOLDERS, check_rows
from utils.core.bundle import load_bundle
from utils.core.classifier import Classifier
from utils.core.guard import screen_decoded
from utils.core.pixels import InputError
from utils.core.preprocess import decode_for_model, preprocess

CHEST_FILMS = 300
AUGMENT_SEED = 20261204
BATCH = 16


def split_groups(data_dir: Path, split_file: Path, limit: int | None) -> dict[str, list[dict]]:
    """{group: rows with `file`, `label`, `source`} for the training split's three parts."""
    groups: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for row in read_split(split_file):
        groups[row["split"]].append({**row, "file": str(data_dir / row["path"])})
    return {name: rows[:limit] for name, rows in groups.items()}


def other_groups(data_dir: Path, limit: int | None) -> dict[str, list[dict]]:
    """The unseen-source checks and a fixed draw of chest films (radiographs of another region)."""
    groups = {}
    for folder in CHECK_FOLDERS:
        groups[folder] = [{**r, "source": folder} for r in check_rows(data_dir, folder)][:limit]
    chest = [{**r, "label": "healthy", "source": "chest_kermany"} for r in check_rows(data_dir, "chest_kermany")]
    order = np.random.default_rng(0).permutation(len(chest))[: min(CHEST_FILMS, limit or CHEST_FILMS)]
    groups["chest_kermany"] = [chest[i] for i in sorted(order)]
    return groups


def decode_rows(rows: list[dict], size: int) -> dict[str, np.ndarray]:
    """Model inputs and decoded facts of each film (an unreadable film keeps a blank input)."""
    inputs, shapes, flags = [], [], []
    for row in rows:
        try:
            decoded = decode_for_model(Path(row["file"]).read_bytes())
            inputs.append(preprocess(decoded.pixels, size)[..., 0])
            shapes.append(decoded.pixels.shape)
            screen = screen_decoded(decoded.pixels, decoded.colour_fraction)
            flags.append((decoded.incomplete is not None, screen is not None, False))
        except InputError:
            inputs.append(np.zeros((size, size), np.uint8))
            shapes.append((0, 0))
            flags.append((False, False, True))
    flag = np.array(flags, bool)
    return {
        "inputs": np.stack(inputs),
        "height": np.array([s[0] for s in shapes]),
        "width": np.array([s[1] for s in shapes]),
        "incomplete": flag[:, 0],
        "screened": flag[:, 1],
        "unreadable": flag[:, 2],
    }


def forward(classifier: Classifier, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, features = [], []
    for start in range(0, len(inputs), BATCH):
        chunk_logits, chunk_features = classifier.logits_and_features(inputs[start : start + BATCH, ..., None])
        logits.append(chunk_logits)
        features.append(chunk_features.astype(np.float16))
    return np.concatenate(logits), np.concatenate(features)


def augmented(inputs: np.ndarray) -> np.ndarray:
    return np.stack(
        [random_view(image, None, np.random.default_rng([AUGMENT_SEED, i]))[0] for i, image in enumerate(inputs)]
    )


def extract_group(classifier: Classifier, rows: list[dict], with_augmented: bool) -> dict[str, np.ndarray]:
    decoded = decode_rows(rows, classifier.bundle.input_size)
    inputs = decoded.pop("inputs")
    logits, features = forward(classifier, inputs)
    flip_logits, _ = forward(classifier, inputs[:, :, ::-1])
    out = {
        **decoded,
        "path": np.array([r["path"] for r in rows]),
        "label": np.array([r["label"] for r in rows]),
        "source": np.array([r["source"] for r in rows]),
        "logits": logits,
        "features": features,
        "flip_logits": flip_logits,
    }
    if with_augmented:
        out["aug_logits"], out["aug_features"] = forward(classifier, augmented(inputs))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/review_features"))
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--limit", type=int, default=None, help="films per group (a quick run)")
    parser.add_argument("--bundle-dir", type=Path, default=None, help="the bundle to run (default: model/)")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    classifier = Classifier(load_bundle(args.bundle_dir, load_keras=False))
    groups = split_groups(args.data_dir, args.split, args.limit)
    ordered = {"val": groups["val"], **other_groups(args.data_dir, args.limit), **groups}
    for name, rows in ordered.items():
        path = args.out / f"{name}.npz"
        if path.exists() or not rows:
            continue
        started = time.perf_counter()
        arrays: dict[str, Any] = extract_group(classifier, rows, with_augmented=name == "train")
        np.savez_compressed(path, **arrays)
        print(f"{name}: {len(rows)} films in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
