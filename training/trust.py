"""Trust figures for a trained model: fit the not-an-X-ray guard and measure it; pointing game.

1. Guard: penultimate features of the clean training images -> class means + shared
   Ledoit-Wolf covariance; threshold = a high quantile of the validation distances. The
   cheap checks' limits (utils.core.guard) are checked against every training image.
2. Measured through the serving path (bytes -> utils.core.classifier): share of test-split
   radiographs flagged, and share of generated non-radiographs flagged (by kind and check).
3. Pointing game on the fractured FracAtlas test images: is the heatmap's maximum inside a
   fracture box, and what share of the heatmap mass lies inside, against a uniform map.

Usage: python -m training.trust --run artifacts/run_nsfwjs [--quick]
Writes <run>/trust/: trust.json, ood_guard.npz, guard_distances.png, pointing_game.png.
"""

from __future__ import annotations

import json
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import keras
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from training.augment import random_view
from training.boxes import box_mask, read_boxes
from training.data import CLASSES, quick_subset, read_split, run_step_parser
from training.evaluate import save_plot
from training.features import build_image_cache
from training.gradcam import build_gradcam_model, make_gradcam_heatmap
from training.guard_fit import fit_feature_guard
from training.non_radiographs import make_non_radiographs
from training.run_folder import classifier_for
from utils.core.bundle import (
    sha256_of,
)
from utils.core.guard import (
    FEATURE_MESSAGE,
    FLAT_MESSAGE,
    MAX_COLOUR_FRACTION,
    MIN_DYNAMIC_RANGE,
    dynamic_range,
)
from utils.core.heatmap import overlay_heatmap, upsample_heatmap
from utils.core.inference import to_model_input
from utils.core.preprocess import decode_for_model, preprocess, preprocess_with_geometry

GUARD_FILE = "ood_guard.npz"
# 2.5 % of validation radiographs lie above the threshold by construction; the issue allows 5 %
# on the test split, so this leaves room for the split-to-split difference.
GUARD_VAL_QUANTILE = 0.975
NON_RADIOGRAPHS = 240
GUARD_AUGMENTED_VIEWS = 1  # per training image, beside the clean view
NON_RADIOGRAPH_SEED = 20261126
FRACTURED = CLASSES.index("fractured")


def augmented_views(images: np.ndarray, views: int, seed: int) -> np.ndarray:
    """views fresh live-augmentation views of each (S, S) uint8 image, image-major order."""
    return (
        np.stack(
            [
                random_view(image, None, np.random.default_rng([seed, i, v]))[0]
                for i, image in enumerate(images)
                for v in range(views)
            ]
        )
        if views
        else images[:0]
    )


def outputs(classifier, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate features) of (N, S, S) uint8 model inputs."""
    logits, features = [], []
    for i in range(0, len(images), batch_size):
        a, b = classifier.logits_and_features(images[i : i + batch_size, ..., None])
        logits.append(a)
        features.append(b)
    return np.concatenate(logits), np.concatenate(features)


def _screen_stats(path: str) -> tuple[float, float]:
    decoded = decode_for_model(Path(path).read_bytes())
    return decoded.colour_fraction, dynamic_range(decoded.pixels)


def screen_stats(rows: list[dict], data_dir: Path, workers: int = 2) -> np.ndarray:
    """(N, 2): colour fraction and dynamic range of each decoded image."""
    with Pool(workers) as pool:
        return np.array(pool.map(_screen_stats, [str(data_dir / r["path"]) for r in rows], chunksize=16))


def flag_summary(predictions, kinds: list[str]) -> dict:
    flagged = np.array([p.not_xray is not None for p in predictions])
    by_check = {"colour": 0, "flat": 0, "features": 0}
    for p in predictions:
        if p.not_xray is not None:
            by_check[
                "flat" if p.not_xray == FLAT_MESSAGE else "features" if p.not_xray == FEATURE_MESSAGE else "colour"
            ] += 1
    return {
        "n": int(len(flagged)),
        "flagged": int(flagged.sum()),
        "flagged_rate": float(flagged.mean()),
        "by_check": by_check,
        "by_kind": {k: float(flagged[np.array(kinds) == k].mean()) for k in sorted(set(kinds))},
    }


def pointing_game(heatmap_of, rows: list[dict], data_dir: Path) -> dict:
    """heatmap_of((S, S) uint8 model input) -> (h, w) map, on FracAtlas fractured images vs.
    their boxes: is the map's maximum inside a box, and what share of its mass is."""
    hits, masses, uniform, n_boxes, map_side = [], [], [], 0, 0
    for row in rows:
        box_path = data_dir / "fracatlas" / "boxes" / (Path(row["path"]).stem + ".txt")
        boxes = read_boxes(box_path) if box_path.exists() else np.zeros((0, 4))
        if not len(boxes):
            continue
        decoded = decode_for_model((data_dir / row["path"]).read_bytes())
        image, geometry = preprocess_with_geometry(decoded.pixels)
        size = image.shape[0]
        mask = box_mask(boxes, decoded.pixels.shape, geometry, size)
        x0, y0, x1, y1 = geometry.content_box()
        content = np.zeros((size, size), dtype=bool)
        content[int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))] = True
        mask &= content
        if not mask.any():
            continue
        cells = heatmap_of(image[..., 0])
        map_side = cells.shape[0]
        heat = upsample_heatmap(cells, (size, size)) * content
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits.append(bool(mask[peak]))
        masses.append(float(heat[mask].sum() / max(heat.sum(), 1e-12)))
        uniform.append(float(mask.sum() / content.sum()))
        n_boxes += len(boxes)
    if not hits:
        return {"n_images": 0}
    return {
        "n_images": len(hits),
        "n_boxes": n_boxes,
        "class": "fractured",
        "map_side": map_side,
        "hit_rate": float(np.mean(hits)),
        "mass_inside": float(np.mean(masses)),
        "uniform_hit_rate": float(np.mean(uniform)),
        "uniform_mass_inside": float(np.mean(uniform)),
        "per_image_mass": masses,
        "per_image_uniform": uniform,
    }


def synthetic_bone(gap_row: float, shaft_col: float, size: int = 400, seed: int = 0) -> np.ndarray:
    """A made-up radiograph: dark field, one bright shaft, a dark break across it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    image = 0.08 + 0.03 * rng.standard_normal((size, size))
    shaft = np.abs(xx - size * shaft_col) < size * 0.08
    image[shaft] += 0.6
    image[shaft & (np.abs(yy - size * gap_row) < 4)] -= 0.45
    return np.clip(image, 0, 1).astype(np.float32)


def heatmap_examples(classifier, out_dir: Path) -> str:
    """Sanity figure on synthetic images only (no dataset image leaves the data folder): the
    `fractured` map should follow the shaft and the break as they move."""
    matplotlib.use("Agg")

    cases = [(0.3, 0.3), (0.5, 0.5), (0.7, 0.7)]
    fig, axes = plt.subplots(2, len(cases), figsize=(3 * len(cases), 6))
    for column, (gap_row, shaft_col) in enumerate(cases):
        image = preprocess(synthetic_bone(gap_row, shaft_col, seed=column))[..., 0]
        heat = classifier.heatmap(image, "fractured")
        axes[0, column].imshow(image, cmap="gray")
        axes[0, column].set_title(f"break at row {gap_row:.0%}", fontsize=9)
        axes[1, column].imshow(overlay_heatmap(image, heat, 0.5))
        axes[1, column].set_title(f"{classifier.heatmap_kind}, fractured", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Heatmap sanity check on synthetic images", fontsize=10)
    return save_plot(fig, out_dir, "heatmap_examples.png", dpi=90)


def plots(out_dir: Path, val_d, test_d, non_d, threshold, pointing) -> list[str]:
    matplotlib.use("Agg")

    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    top = np.percentile(np.concatenate([val_d, test_d, non_d]), 99.5)
    bins = np.linspace(0, top, 50)
    ax.hist(val_d, list(bins), alpha=0.5, density=True, label="validation radiographs")
    ax.hist(test_d, list(bins), alpha=0.5, density=True, label="test radiographs")
    ax.hist(np.minimum(non_d, top), list(bins), alpha=0.5, density=True, label="generated non-radiographs")
    ax.axvline(threshold, color="k", ls="--", label="threshold")
    ax.set_xlabel("Mahalanobis distance of penultimate features")
    ax.legend(fontsize=8)
    ax.set_title("Not-an-X-ray guard")
    names.append(save_plot(fig, out_dir, "guard_distances.png"))
    if pointing.get("n_images"):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.scatter(pointing["per_image_uniform"], pointing["per_image_mass"], s=10)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("box share of the image (uniform map)")
        ax.set_ylabel(f"{pointing.get('heatmap', 'heatmap')} mass inside boxes")
        ax.set_title(f"Pointing game, {pointing['n_images']} FracAtlas test images")
        names.append(save_plot(fig, out_dir, "pointing_game.png"))
    return names


def trust(run_dir: Path, out_dir: Path, data_dir: Path, split_file: Path, cache_dir: Path, quick: bool = False) -> dict:
    """The distance guard fitted on training features and measured, and the pointing game."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_report = json.loads((run_dir / "eval" / "metrics.json").read_text())
    metadata = {"classes": list(CLASSES), "temperature": eval_report["temperature"], "presets": eval_report["presets"]}
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    plain = classifier_for(model, metadata)
    rows = read_split(split_file)
    by_split = {s: [r for r in (quick_subset(rows) if quick else rows) if r["split"] == s] for s in SPLITS}
    features = split_features(plain, by_split, sha256_of(run_dir / "model.keras"), out_dir, data_dir, cache_dir)
    labels = {
        split: np.array([CLASSES.index(r["label"]) for r in split_rows]) for split, split_rows in by_split.items()
    }
    guard = fit_guard(plain, features, labels, build_image_cache(by_split["train"], data_dir, cache_dir))
    guard.save(out_dir / GUARD_FILE)
    guarded = classifier_for(model, metadata, guard, engine=plain.engine)  # one compiled forward pass
    test_predictions = guarded.predict_many(
        [(r["path"], (data_dir / r["path"]).read_bytes()) for r in by_split["test"]], batch_size=16
    )
    non = make_non_radiographs(24 if quick else NON_RADIOGRAPHS, NON_RADIOGRAPH_SEED)
    non_predictions = guarded.predict_many([(name, data) for name, _, data in non], batch_size=16)
    fractured_fa = [r for r in by_split["test"] if r["source"] == "fracatlas" and r["label"] == "fractured"]
    pointing = pointing_figures(plain, model, fractured_fa, data_dir)
    report: dict[str, Any] = {
        "guard": guard_report(guard, features, labels, screen_stats(by_split["train"], data_dir)),
        "pointing_game": {k: v for k, v in pointing.items() if not k.startswith("per_image")},
    }
    report["guard"]["test_radiographs"] = flag_summary(test_predictions, [r["source"] for r in by_split["test"]])
    report["guard"]["non_radiographs"] = flag_summary(non_predictions, [kind for _, kind, _ in non])
    report["guard"]["non_radiograph_seed"] = NON_RADIOGRAPH_SEED
    report["plots"] = plots(
        out_dir,
        guard.distance(features["val"]),
        np.array([p.ood_distance for p in test_predictions]),
        np.array([p.ood_distance for p in non_predictions if p.ood_distance is not None]),
        guard.threshold,
        pointing,
    ) + [heatmap_examples(plain, out_dir)]
    (out_dir / "trust.json").write_text(json.dumps(report, indent=1))
    return report


SPLITS = ("train", "val", "test")


def split_features(plain, by_split: dict, model_sha256: str, out_dir: Path, data_dir: Path, cache_dir: Path) -> dict:
    """The pooled features of each split, cached beside the report, keyed by the model file
    and the images, so a rerun is quick."""
    features = {}
    for split, split_rows in by_split.items():
        cache = out_dir / f"features_{split}.npz"
        key = np.array([model_sha256] + [r["sha256"] for r in split_rows])
        cached = np.load(cache) if cache.exists() else None
        if cached is not None and np.array_equal(cached["key"], key):
            features[split] = cached["features"]
        else:
            _, features[split] = outputs(plain, build_image_cache(split_rows, data_dir, cache_dir))
            np.savez(cache, features=features[split], key=key)
    return features


def fit_guard(plain, features: dict, labels: dict, train_images: np.ndarray):
    """The distance guard: training features and live-augmentation views of the training films
    (films from other hospitals are framed, cropped and exposed differently, so the guard should
    flag what is not a radiograph, not what is not a FracAtlas framing); threshold on validation."""
    views = augmented_views(train_images, GUARD_AUGMENTED_VIEWS, NON_RADIOGRAPH_SEED)
    _, view_features = outputs(plain, views) if len(views) else (None, np.zeros((0, features["train"].shape[1])))
    return fit_feature_guard(
        np.concatenate([features["train"], view_features]),
        np.concatenate([labels["train"], np.repeat(labels["train"], GUARD_AUGMENTED_VIEWS)]),
        features["val"],
        GUARD_VAL_QUANTILE,
    )


def pointing_figures(plain, model, fractured_fa: list[dict], data_dir: Path) -> dict:
    """The pointing game of the model's own map, and of Grad-CAM by GradientTape as the reference."""
    pointing = pointing_game(lambda image: plain.heatmap(image, "fractured"), fractured_fa, data_dir)
    pointing["heatmap"] = plain.heatmap_kind
    if plain.heatmap_kind != "Grad-CAM":
        grad_model = build_gradcam_model(model)
        fractured = CLASSES.index("fractured")
        reference = pointing_game(
            lambda image: make_gradcam_heatmap(to_model_input(image[None, ..., None]), grad_model, fractured),
            fractured_fa,
            data_dir,
        )
        pointing["gradcam_reference"] = {k: v for k, v in reference.items() if not k.startswith("per_image")}
    return pointing


def guard_report(guard, features: dict, labels: dict, train_stats: np.ndarray) -> dict:
    """How the guard was fitted and what the cheap checks see on the training films."""
    return {
        "method": "class-conditional Mahalanobis distance (shared Ledoit-Wolf covariance) "
        "on the global-average-pooled mixed7 features",
        "fitted_on": f"{len(labels['train'])} training images: the clean view and "
        f"{GUARD_AUGMENTED_VIEWS} live-augmentation view(s) of each",
        "threshold": guard.threshold,
        "val_quantile": GUARD_VAL_QUANTILE,
        "val_flagged_rate": float(np.mean(guard.is_outlier(features["val"]))),
        "cheap_checks": {
            "max_colour_fraction": MAX_COLOUR_FRACTION,
            "min_dynamic_range": MIN_DYNAMIC_RANGE,
            "train_max_colour_fraction": float(train_stats[:, 0].max()),
            "train_colour_flagged": int((train_stats[:, 0] > MAX_COLOUR_FRACTION).sum()),
            "train_min_dynamic_range": float(train_stats[:, 1].min()),
            "train_flat_flagged": int((train_stats[:, 1] < MIN_DYNAMIC_RANGE).sum()),
            "train_n": int(len(train_stats)),
        },
    }


def markdown(report: dict) -> str:
    g, p = report["guard"], report["pointing_game"]
    test, non, cheap = g["test_radiographs"], g["non_radiographs"], g["cheap_checks"]
    lines = [
        f"Not-an-X-ray guard ({g['method']}; threshold {g['threshold']:.1f}, the "
        f"{g['val_quantile']:.1%} quantile of validation distances; plus a colour check "
        f"(> {cheap['max_colour_fraction']:.0%} clearly coloured pixels) and a flat-image check "
        f"(1st-99th percentile range < {cheap['min_dynamic_range']}):",
        "",
        "| inputs | n | flagged |",
        "|---|---|---|",
        f"| test-split radiographs | {test['n']} | {test['flagged_rate']:.1%} |",
    ]
    lines += [f"| test radiographs, {k} | | {v:.1%} |" for k, v in test["by_kind"].items()]
    lines += [f"| generated non-radiographs | {non['n']} | {non['flagged_rate']:.1%} |"]
    lines += [f"| non-radiographs, {k} | | {v:.1%} |" for k, v in non["by_kind"].items()]
    caught = ", ".join(f"{k} {v}" for k, v in non["by_check"].items())
    lines += [
        "",
        f"Which check caught the non-radiographs: {caught}. Training images caught by "
        f"the cheap checks: colour {cheap['train_colour_flagged']}, flat {cheap['train_flat_flagged']} "
        f"of {cheap['train_n']} (largest colour fraction {cheap['train_max_colour_fraction']:.3f}, "
        f"smallest range {cheap['train_min_dynamic_range']:.3f}).",
        "",
        "The non-radiographs are made by `training/non_radiographs.py` (scikit-image's bundled "
        f"photographs cropped and colour-jittered, synthetic textures, Pillow-drawn documents, "
        f"near-blank images; seed {g['non_radiograph_seed']}).",
    ]
    if p.get("n_images"):
        kind = p.get("heatmap", "Grad-CAM")
        what = (
            "the model's own fracture map (a per-cell fracture probability on the mixed7 grid, "
            "trained against the FracAtlas training boxes)"
            if kind == "fracture map"
            else "Grad-CAM of `fractured` on mixed7"
        )
        lines += [
            "",
            f"Pointing game ({what}; {p['n_images']} fractured FracAtlas test images, "
            f"{p['n_boxes']} boxes, a {p['map_side']} x {p['map_side']} map): the heatmap maximum falls "
            f"inside a box in **{p['hit_rate']:.1%}** of images (a uniform map, i.e. a random point: "
            f"{p['uniform_hit_rate']:.1%}); share of heatmap mass inside the boxes {p['mass_inside']:.1%} "
            f"(uniform map: {p['uniform_mass_inside']:.1%}).",
        ]
        ref = p.get("gradcam_reference")
        if ref and ref.get("n_images"):
            lines += [
                "",
                f"Reference: Grad-CAM of `fractured` of the same model (`training.gradcam.make_gradcam_heatmap`, "
                f"by GradientTape) hits a box in {ref['hit_rate']:.1%} of the same images, with "
                f"{ref['mass_inside']:.1%} of its mass inside.",
            ]
        lines += [
            "",
            f"`heatmap_examples.png` shows the {kind} on synthetic images (a bright shaft with a drawn "
            "break, moved across the frame).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = run_step_parser(__doc__.splitlines()[0]).parse_args(argv)
    report = trust(args.run, args.out or args.run / "trust", args.data_dir, args.split, args.cache_dir, args.quick)
    print(markdown(report))


if __name__ == "__main__":
    main()
