"""The unseen-source checks as arrays: the films of knee_oai/, wrist_check/ and hbfmid_check/
preprocessed once (the serving preprocessing), and the figures a model gets on them.

Nothing is fitted here. The off-source AUROC is the *worst* AUROC of P(any fracture) for the
hbfmid_check fractures against each healthy source in turn: a new negative source moves the
films that look like it, so no single healthy source may carry the figure.
"""

from __future__ import annotations

import csv
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from training.features import spec_hash
from utils.core.preprocess import INPUT_SIZE, load_and_preprocess

HEALTHY_SOURCES = ("knee_oai", "wrist_check")
FRACTURE_SOURCE = "hbfmid_check"
CHECK_FOLDERS = HEALTHY_SOURCES + (FRACTURE_SOURCE,)


def check_rows(data_dir: Path, folder: str) -> list[dict]:
    """The manifest rows of one check folder, with `file` (absolute path) added; [] when absent."""
    manifest = data_dir / folder / "manifest.csv"
    if not manifest.exists():
        return []
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["file"] = str(data_dir / folder / row["path"])
    return rows


def _preprocess_file(path: str, size: int = INPUT_SIZE) -> np.ndarray:
    image, _ = load_and_preprocess(Path(path).read_bytes(), size)
    return image[..., 0]


def check_images(
    data_dir: Path,
    cache_dir: Path,
    limit_per_source: int | None = None,
    size: int = INPUT_SIZE,
    folders: tuple[str, ...] = CHECK_FOLDERS,
) -> dict[str, dict]:
    """{folder: {"images": (N, S, S) uint8, "labels": [...], "paths": [...]}} for those of
    `folders` that exist; cached by the files' sha256 and the preprocessing."""
    out = {}
    for folder in folders:
        rows = check_rows(data_dir, folder)[:limit_per_source]
        if not rows:
            continue
        key = spec_hash("check", folder, [r.get("sha256", r["path"]) for r in rows], size)
        path = cache_dir / f"check_{folder}_{size}_{key}.npz"
        if path.exists():
            images = np.load(path)["images"]
        else:
            with Pool(2) as pool:
                files = [r["file"] for r in rows]
                images = np.stack(pool.map(partial(_preprocess_file, size=size), files, chunksize=16))
            cache_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, images=images)
        out[folder] = {"images": images, "labels": [r["label"] for r in rows], "paths": [r["path"] for r in rows]}
    return out


def first_knees(checks: dict[str, dict], count: int) -> dict[str, dict]:
    """The checks with only the first `count` knee films: a fixed subset keeps per-epoch and
    per-candidate scoring short, and every study the same."""
    if "knee_oai" not in checks:
        return checks
    return {**checks, "knee_oai": {k: v[:count] for k, v in checks["knee_oai"].items()}}


def offsource_aurocs(p_fracture: dict[str, np.ndarray], labels: dict[str, list[str]]) -> dict[str, float]:
    """AUROC of P(any fracture): hbfmid_check's fractured films against each healthy source, the
    worst of them (`offsource_auroc`, what selection uses), and against all healthy films pooled
    (`auroc_pooled`: flattering when one source dominates the pool, so reported, never chosen on)."""
    fractured = p_fracture[FRACTURE_SOURCE][np.array(labels[FRACTURE_SOURCE]) != "healthy"]
    result = {}
    for source in HEALTHY_SOURCES:
        if source not in p_fracture:
            continue
        healthy = p_fracture[source]
        y = np.r_[np.ones(len(fractured)), np.zeros(len(healthy))]
        result[f"auroc_vs_{source}"] = float(roc_auc_score(y, np.r_[fractured, healthy]))
    result["offsource_auroc"] = min(result.values()) if result else float("nan")
    pooled = [p_fracture[s] for s in HEALTHY_SOURCES if s in p_fracture]
    if pooled:
        healthy = np.concatenate(pooled)
        y = np.r_[np.ones(len(fractured)), np.zeros(len(healthy))]
        result["auroc_pooled"] = float(roc_auc_score(y, np.r_[fractured, healthy]))
    return result


def epoch_figures(p_fracture: dict[str, np.ndarray], labels: dict[str, list[str]], threshold: float) -> dict:
    """Per-epoch figures: the off-source AUROCs, and the share of each healthy source and of the
    hbfmid_check fractures on each side of a fracture threshold fitted on validation."""
    figures = offsource_aurocs(p_fracture, labels)
    for source in HEALTHY_SOURCES:
        if source in p_fracture:
            figures[f"{source}_below_threshold"] = float(np.mean(p_fracture[source] < threshold))
    fractured = p_fracture[FRACTURE_SOURCE][np.array(labels[FRACTURE_SOURCE]) != "healthy"]
    figures["hbfmid_recall_at_threshold"] = float(np.mean(fractured >= threshold))
    return figures


def selection_score(val_scores: dict, figures: dict | None) -> float:
    """The score every checkpoint and study is chosen on: the mean of FracAtlas validation AUROC,
    severity AUROC, the off-source AUROC (worst source) and the worse of the two healthy
    checks' rates below the validation threshold. Without checks: the first two only."""
    parts = [val_scores["fracatlas_auroc"], val_scores["severity_auroc"]]
    if figures:
        healthy = [figures[k] for k in figures if k.endswith("_below_threshold")]
        parts += [figures["offsource_auroc"]] + ([min(healthy)] if healthy else [])
    return float(np.mean(parts))
