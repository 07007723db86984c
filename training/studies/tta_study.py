"""Test-time augmentation, measured: does averaging P(any fracture) over a horizontal flip and
a zoomed-out view lift the off-source AUROC enough (>= 0.02) to pay for its cost?

For a run's model: P(any fracture) of the clean view, of clean + flip, and of clean + flip +
zoom-out (0.85x, black border), on the FracAtlas validation films (AUROC) and on the
unseen-source checks (off-source AUROC per healthy source; measured only), with the cost in
ms per image of each variant on this machine.

Usage: python -m training.studies.tta_study --run artifacts/RUN [--knees 400]
Writes <run>/tta.json and prints a markdown table.
"""

from __future__ import annotations

import time

import cv2
import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from training.data import CLASSES, read_split, run_step_parser
from training.features import build_image_cache
from training.offsource import check_images, first_knees, offsource_aurocs
from training.studies.output import write_study
from utils.core.inference import softmax, to_model_input

ZOOM_OUT = 0.85


VARIANTS = {"clean": ("clean",), "flip": ("clean", "flip"), "flip_zoom": ("clean", "flip", "zoom_out")}


def view(images: np.ndarray, name: str) -> np.ndarray:
    """One (N, S, S) uint8 view of the images: clean, flipped left to right, or zoomed out."""
    if name == "flip":
        return np.ascontiguousarray(images[:, :, ::-1])
    if name == "zoom_out":
        size = images.shape[1]
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), 0.0, ZOOM_OUT)
        return np.stack([cv2.warpAffine(im, matrix, (size, size), borderValue=0) for im in images])
    return images


def p_any_fracture_by_view(
    model, images: np.ndarray, batch: int = 32, views: tuple[str, ...] = VARIANTS["flip_zoom"]
) -> dict[str, tuple[np.ndarray, float]]:
    """{view: (P(any fracture), ms per image)}: each distinct view runs once, and a variant
    averages the views it names (so its cost is the sum of theirs)."""

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    result = {}
    for name in views:
        started = time.perf_counter()
        images_of_view = view(images, name)
        logits = [
            np.asarray(forward(to_model_input(images_of_view[i : i + batch][..., None])), np.float64)
            for i in range(0, len(images_of_view), batch)
        ]
        ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        result[name] = (1.0 - softmax(np.concatenate(logits))[:, 0], ms)
    return result


def average(by_view: dict[str, tuple[np.ndarray, float]], variant: str) -> tuple[np.ndarray, float]:
    """(mean P(any fracture) over the variant's views, the sum of their ms per image)."""
    names = VARIANTS[variant]
    return np.mean([by_view[n][0] for n in names], axis=0), float(sum(by_view[n][1] for n in names))


def study(model, val: dict, checks: dict) -> dict:
    val_by_view = p_any_fracture_by_view(model, val["images"])
    checks_by_view = {name: p_any_fracture_by_view(model, c["images"]) for name, c in checks.items()}
    result = {}
    for variant in VARIANTS:
        p_val, ms = average(val_by_view, variant)
        p_check = {name: average(by_view, variant)[0] for name, by_view in checks_by_view.items()}
        result[variant] = {
            "val_fracatlas_auroc": float(roc_auc_score(val["fractured"], p_val)),
            **offsource_aurocs(p_check, {n: c["labels"] for n, c in checks.items()}),
            "ms_per_image": ms,
        }
    return result


def markdown(result: dict) -> str:
    lines = [
        "| variant | views | val FracAtlas AUROC | off-source AUROC | vs knee_oai | vs wrist_check | ms per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        lines.append(
            f"| {name} | {len(VARIANTS[name])} | {r['val_fracatlas_auroc']:.3f} | "
            f"{r['offsource_auroc']:.3f} | {r['auroc_vs_knee_oai']:.3f} | {r['auroc_vs_wrist_check']:.3f} | "
            f"{r['ms_per_image']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def study_films(args) -> tuple[dict, dict]:
    """(FracAtlas validation films with their fracture flags, the unseen-source checks with the
    first `args.knees` knees): what the TTA and ensemble studies score."""
    rows = [r for r in read_split(args.split) if r["split"] == "val" and r["source"] == "fracatlas"]
    val = {
        "images": build_image_cache(rows, args.data_dir, args.cache_dir),
        "fractured": np.array([CLASSES.index(r["label"]) > 0 for r in rows]),
    }
    return val, first_knees(check_images(args.data_dir, args.cache_dir), args.knees)


def main(argv=None) -> dict:
    parser = run_step_parser(__doc__.splitlines()[0], out=False)
    parser.add_argument("--knees", type=int, default=400, help="knee films used (a fixed first subset)")
    args = parser.parse_args(argv)
    val, checks = study_films(args)
    model = keras.saving.load_model(args.run / "model.keras", compile=False)
    result = study(model, val, checks)
    write_study(result, args.run / "tta.json", markdown(result))
    return result


if __name__ == "__main__":
    main()
