"""The original study's comparison, done on one split with one recipe: table rows per run.

Each run is a training.finetune output folder (the shipped InceptionV3 and the comparison's
other backbones). For each: its best validation scores, its test figures (training.evaluate,
run once here when missing) and the knee check through the model alone (no feature guard,
so the backbones are compared on their own outputs). Writes the rows as JSON, which
training.export puts in metadata.json and the model card.

Usage: python -m training.studies.compare --runs artifacts/finetune artifacts/cmp_small_cnn ... --out FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training import evaluate, knee_check
from training.data import DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir
from training.studies.output import write_study

NAMES = {
    "inception_v3": "InceptionV3 (nsfwjs init)",
    "efficientnet_lite2": "EfficientNet-Lite2 (ImageNet)",
    "small_cnn": "small CNN (from scratch)",
}


def row(run: Path, data_dir: Path, split: Path, cache_dir: Path) -> dict:
    summary = json.loads((run / "train_summary.json").read_text())
    if not (run / "eval" / "metrics.json").exists():
        evaluate.main(
            ["--run", str(run), "--data-dir", str(data_dir), "--split", str(split), "--cache-dir", str(cache_dir)]
        )
    test = json.loads((run / "eval" / "metrics.json").read_text())
    knee_file = run / "knee_check_no_guard.json"
    if not knee_file.exists():
        knee_check.main(["--run", str(run), "--data-dir", str(data_dir), "--no-guard"])
    knee = json.loads(knee_file.read_text())["balanced"]
    best = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
    backbone = summary.get("backbone", "inception_v3")
    args = summary["args"]
    return {
        "model": NAMES.get(backbone, backbone),
        "backbone": backbone,
        "run": run.name,
        "recipe": f"two-stage, live augmentation, {len(summary['history'])} epochs, lr {args['lr']}, "
        f"frozen until {args['frozen_until']}, web fractures in P(any fracture) at weight "
        f"{float(args.get('web_fracture_weight', 0.0)):g}",
        "best_epoch": summary["best_epoch"],
        "epochs": len(summary["history"]),
        "val_fracatlas_auroc": best["fracatlas_auroc"],
        "val_severity_auroc": best["severity_auroc"],
        "val_macro_auroc": best["macro_auroc"],
        "val_history_fracatlas_auroc": [h["fracatlas_auroc"] for h in summary["history"]],
        "test_fracatlas_auroc": test["by_source"]["fracatlas"]["point"]["binary_auroc"],
        "test_macro_auroc": test["overall"]["point"]["macro_auroc"],
        "test_balanced_accuracy": test["overall"]["point"]["balanced_accuracy"],
        "knee_healthy_confident": knee["healthy_confident"],
        "knee_fracture_confident": knee["fracture_confident"],
        "knee_guard": False,
        "train_minutes": summary["wall_seconds"] / 60,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | best epoch | val FracAtlas AUROC | test FracAtlas AUROC | test macro AUROC | "
        "test balanced accuracy | knee: confidently healthy | training minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['best_epoch']} | {r['val_fracatlas_auroc']:.3f} | {r['test_fracatlas_auroc']:.3f} | "
            f"{r['test_macro_auroc']:.3f} | {r['test_balanced_accuracy']:.3f} | {r['knee_healthy_confident']:.1%} | "
            f"{r['train_minutes']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    rows = [row(run, args.data_dir, args.split, args.cache_dir) for run in args.runs]
    write_study(rows, args.out, markdown(rows))
    return rows


if __name__ == "__main__":
    main()
