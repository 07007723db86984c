"""Lay out a shipped bundle as a run folder (model.keras, val_logits.npz), so that the later
pipeline steps (evaluate, trust, offsource_report) can re-derive its presets under another
decision rule without retraining.

Usage: python -m training.studies.bundle_as_run --bundle-dir model --out artifacts/bundle_2.0.0
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import keras
import numpy as np

from training.data import CLASSES, DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir, read_split
from training.evaluate import model_logits
from training.features import build_image_cache
from utils.core.bundle import load_bundle


def main(argv=None) -> Path:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-dir", type=Path, default=Path("model"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    bundle = load_bundle(args.bundle_dir, load_keras=False)
    if bundle.model_path is None:
        raise SystemExit(f"{args.bundle_dir} has no .keras model to lay out as a run")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle.model_path, args.out / "model.keras")
    rows = [r for r in read_split(args.split) if r["split"] == "val"]
    model = keras.saving.load_model(args.out / "model.keras", compile=False)
    logits = model_logits(model, build_image_cache(rows, args.data_dir, args.cache_dir))
    np.savez(
        args.out / "val_logits.npz",
        logits=logits,
        labels=np.array([CLASSES.index(r["label"]) for r in rows]),
        sha256=np.array([r["sha256"] for r in rows]),
    )
    print(f"{args.out}: model.keras and val_logits.npz of {len(rows)} validation images")
    return args.out


if __name__ == "__main__":
    main()
