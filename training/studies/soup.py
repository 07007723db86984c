"""A model soup: one model whose weights are the mean of several runs' weights (Wortsman et al.,
"Model soups", ICML 2022). Runs fine-tuned from the same starting model at a low learning rate
usually sit in one basin, so their mean can keep an ensemble's gain at the cost of one model.

Usage: python -m training.studies.soup --runs artifacts/A artifacts/B [...] --out artifacts/soup
Writes <out>/model.keras (no optimizer state). Measure it like any member:
python -m training.studies.ensemble_study --runs artifacts/A artifacts/soup, and the figures a training
epoch is chosen on (validation scores, unseen-source figures, selection score) with
python -m training.studies.soup --score artifacts/A artifacts/soup.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from training.data import CLASSES, DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir, read_split
from training.evaluate import model_logits
from training.features import build_image_cache
from training.finetune import validation_scores, with_selection_score
from training.offsource import FRACTURE_SOURCE, check_images, first_knees
from utils.core.inference import softmax


def average_weights(weight_lists: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The element-wise mean of models' weights, given in the same order and shapes."""
    if len(weight_lists) < 2:
        raise ValueError("a soup needs at least two models")
    shapes = [[w.shape for w in weights] for weights in weight_lists]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("the models differ in architecture: their weights do not line up")
    return [np.mean(np.stack(group), axis=0).astype(group[0].dtype) for group in zip(*weight_lists)]


def starting_models(runs: list[Path]) -> set[str | None]:
    """The starting model each run recorded (its sha256, or its path for older runs)."""
    starts = set()
    for run in runs:
        args = json.loads((run / "train_summary.json").read_text())
        starts.add(args.get("init_from_sha256") or args["args"].get("init_from"))
    return starts


def make_soup(runs: list[Path], out: Path) -> Path:
    """Average the runs' model.keras into out/model.keras; refuses runs from different starts."""
    if len(starting_models(runs)) != 1:
        raise ValueError("the runs started from different models; their mean is not one basin")
    models = [keras.saving.load_model(run / "model.keras", compile=False) for run in runs]
    soup = models[0]
    soup.set_weights(average_weights([m.get_weights() for m in models]))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.keras"
    soup.save(path, include_optimizer=False)
    (out / "soup.json").write_text(json.dumps({"runs": [str(r) for r in runs]}, indent=1))
    return path


def selection_films(knees: int = 400) -> dict:
    """What a candidate is scored on: the validation split (images, labels, sources) and the
    unseen-source checks with the first `knees` knees, as in training; none when
    hbfmid_check, whose fractures the off-source figures need, is absent."""
    rows = [r for r in read_split(DEFAULT_SPLIT_FILE) if r["split"] == "val"]
    checks = check_images(default_data_dir(), default_cache_dir())
    return {
        "images": build_image_cache(rows, default_data_dir(), default_cache_dir()),
        "labels": np.array([CLASSES.index(r["label"]) for r in rows]),
        "sources": np.array([r["source"] for r in rows]),
        "checks": first_knees(checks, knees) if FRACTURE_SOURCE in checks else {},
    }


def selection_row(run: Path, films: dict) -> dict:
    """The figures a training epoch is chosen on, for run/model.keras: the validation scores,
    the unseen-source figures at the validation threshold and training.offsource.selection_score.
    The checks are measured, never fitted."""
    model = keras.saving.load_model(run / "model.keras", compile=False)
    log_probs = model_logits(model, films["images"])
    checks = films["checks"]
    p_checks = {name: 1.0 - softmax(model_logits(model, c["images"]))[:, 0] for name, c in checks.items()}
    labels, sources = films["labels"], films["sources"]
    return with_selection_score(
        validation_scores(labels, sources, log_probs),
        labels,
        sources,
        log_probs,
        p_checks,
        {name: c["labels"] for name, c in checks.items()},
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", help="run folders holding model.keras")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--score", type=Path, nargs="+", help="print the figures an epoch is chosen on, instead")
    args = parser.parse_args(argv)
    if args.score:
        films = selection_films()
        for run in args.score:
            print(run, json.dumps(selection_row(run, films)), flush=True)
        return
    if not args.runs or not args.out:
        parser.error("--runs and --out make a soup (or --score RUN to measure one)")
    print(make_soup(args.runs, args.out))


if __name__ == "__main__":
    main()
