"""Evaluate a trained model on the test split: JSON + Markdown + PNG plots.

The test logits come from the saved `.keras` model run on the cached preprocessed images,
so what is evaluated is the file that ships. Calibration (temperature) and thresholds are
fitted on validation logits only, then applied once to the test split.

Usage: python -m training.evaluate --run artifacts/run_nsfwjs [--out artifacts/run_nsfwjs/eval]
"""

from __future__ import annotations

import argparse
import csv
import json
import warnings
from pathlib import Path
from typing import Any

import keras
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    RocCurveDisplay,
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from training.calibrate import (
    SENSITIVE_TARGET_RECALL,
    any_fracture_threshold,
    expected_calibration_error,
    fit_class_weights,
    fit_temperature,
    fit_uncertainty_thresholds,
    two_stage_presets,
)
from training.data import CLASSES, quick_subset, read_split, run_step_parser
from training.features import build_image_cache
from utils.core.inference import calibrated_probabilities, decide, to_model_input

# Bootstrap resamples often miss a class; sklearn warns about each, which says nothing here.
warnings.filterwarnings("ignore", module="sklearn")

BODY_PART_FLAGS = ("hand", "leg", "hip", "shoulder", "mixed", "hardware")
BOOTSTRAP_ROUNDS = 1000


def model_logits(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = [
        np.asarray(model(to_model_input(images[i : i + batch_size, ..., None]), training=False))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float64)


def labels_from(probs: np.ndarray, preset: dict) -> np.ndarray:
    return np.array([CLASSES.index(decide(p, preset)[0]) for p in probs])


def core_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> dict:
    out = {"n": int(len(y)), "accuracy": float(accuracy_score(y, pred))}
    present = np.unique(y)
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred)) if len(y) else float("nan")
    out["macro_f1"] = float(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    precision, recall, _, support = precision_recall_fscore_support(
        y, pred, labels=range(len(CLASSES)), zero_division=0
    )
    for c, name in enumerate(CLASSES):
        out[f"precision_{name}"] = float(precision[c])
        out[f"recall_{name}"] = float(recall[c])
        out[f"support_{name}"] = int(support[c])
        if 0 < (y == c).sum() < len(y):
            out[f"auroc_{name}"] = float(roc_auc_score(y == c, probs[:, c]))
    aucs = [out[f"auroc_{n}"] for n in CLASSES if f"auroc_{n}" in out]
    out["macro_auroc"] = float(np.mean(aucs)) if aucs else float("nan")
    any_fracture = y > 0
    if 0 < any_fracture.sum() < len(y):
        out["binary_auroc"] = float(roc_auc_score(any_fracture, probs[:, 1] + probs[:, 2]))
        out["binary_recall_any_fracture"] = float(((pred > 0) & any_fracture).sum() / any_fracture.sum())
        out["binary_specificity"] = float(((pred == 0) & ~any_fracture).sum() / (~any_fracture).sum())
        out["binary_sensitivity_at_specificity_0.85"] = sensitivity_at_specificity(
            any_fracture, probs[:, 1] + probs[:, 2], 0.85
        )
    return out


def sensitivity_at_specificity(positive: np.ndarray, score: np.ndarray, specificity: float) -> float:
    """The highest sensitivity of any threshold on score whose specificity is at least this."""
    fpr, tpr, _ = roc_curve(positive, score)
    allowed = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def bootstrap_ci(y, probs, pred, rounds=BOOTSTRAP_ROUNDS, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    samples: dict[str, list] = {}
    for _ in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        for key, value in core_metrics(y[idx], probs[idx], pred[idx]).items():
            if isinstance(value, float) and np.isfinite(value):
                samples.setdefault(key, []).append(value)
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        for k, v in samples.items()
        if len(v) >= rounds // 2
    }


def with_ci(y, probs, pred, rounds=BOOTSTRAP_ROUNDS) -> dict:
    point = core_metrics(y, probs, pred)
    ci = bootstrap_ci(y, probs, pred, rounds) if len(y) >= 10 else {}
    return {"point": point, "ci95": ci}


def selective_metrics(
    y: np.ndarray, probs: np.ndarray, preset: dict, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> dict:
    """Coverage (share not flagged uncertain) and accuracy on the covered images, with CIs."""
    decisions = [decide(p, preset) for p in probs]
    pred = np.array([CLASSES.index(label) for label, _ in decisions])
    covered = ~np.array([uncertain for _, uncertain in decisions], dtype=bool)
    correct = pred == y

    def figures(idx):
        kept = covered[idx]
        return kept.mean(), (correct[idx][kept].mean() if kept.any() else np.nan)

    rng = np.random.default_rng(seed)
    samples = np.array([figures(rng.integers(0, len(y), len(y))) for _ in range(rounds)])
    coverage, accuracy = figures(np.arange(len(y)))
    return {
        "n": int(len(y)),
        "n_covered": int(covered.sum()),
        "coverage": float(coverage),
        "covered_accuracy": float(accuracy),
        "accuracy_all": float(correct.mean()),
        "ci95": {"coverage": _interval(samples[:, 0]), "covered_accuracy": _interval(samples[:, 1])},
    }


def _interval(samples: np.ndarray) -> list[float]:
    """95% percentile interval of the bootstrap samples that are defined (covered accuracy is
    undefined when a resample covers nothing); NaN when none is."""
    defined = samples[np.isfinite(samples)]
    return np.percentile(defined, [2.5, 97.5]).tolist() if defined.size else [float("nan")] * 2


def read_body_part_flags(data_dir: Path) -> dict[str, dict]:
    path = data_dir / "fracatlas" / "dataset.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle)}


def save_plot(fig, out_dir: Path, name: str, dpi: int = 110) -> str:
    """Write a finished figure to out_dir/name, free it, and return the name."""
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=dpi)
    plt.close(fig)
    return name


def plots(out_dir: Path, y, probs_raw, probs_cal, pred) -> list[str]:
    matplotlib.use("Agg")

    names = []
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y, pred, labels=range(3), display_labels=CLASSES, ax=ax, colorbar=False, xticks_rotation=20
    )
    ax.set_title("Test confusion matrix (balanced preset)")
    names.append(save_plot(fig, out_dir, "confusion_matrix.png"))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c, name in enumerate(CLASSES):
        RocCurveDisplay.from_predictions(y == c, probs_cal[:, c], name=name, ax=ax)
    RocCurveDisplay.from_predictions(y > 0, probs_cal[:, 1] + probs_cal[:, 2], name="any fracture", ax=ax)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_title("Test ROC curves (one-vs-rest)")
    names.append(save_plot(fig, out_dir, "roc_curves.png"))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    edges = np.linspace(0, 1, 11)
    for probs, label in ((probs_raw, "before calibration"), (probs_cal, "after temperature scaling")):
        conf, correct = probs.max(1), probs.argmax(1) == y
        xs, ys = [], []
        for low, high in zip(edges[:-1], edges[1:]):
            sel = (conf > low) & (conf <= high)
            if sel.sum() >= 5:
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
        ax.plot(xs, ys, "o-", label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Test reliability diagram")
    ax.legend()
    names.append(save_plot(fig, out_dir, "reliability_diagram.png"))
    return names


def clinical_films(val, split_file: Path) -> np.ndarray:
    """Which validation films are clinical (FracAtlas): the fracture thresholds keep to them, as
    web figures, all fractures, would otherwise set them. All films when that leaves one class."""
    source_of = {r["sha256"]: r["source"] for r in read_split(split_file)}
    clinical = (
        np.array([source_of.get(str(h)) == "fracatlas" for h in val["sha256"]])
        if "sha256" in val.files
        else np.ones(len(val["labels"]), bool)
    )
    if not (val["labels"][clinical] > 0).any() or (val["labels"][clinical] > 0).all():
        clinical = np.ones(len(val["labels"]), bool)
    return clinical


def validation_fit(run_dir: Path, split_file: Path, verdict: str = "two_stage") -> dict:
    """Temperature and presets from the run's validation logits alone (no test figures)."""
    val = np.load(run_dir / "val_logits.npz")
    temperature = fit_temperature(val["logits"], val["labels"])
    val_probs = calibrated_probabilities(val["logits"], temperature)
    clinical = clinical_films(val, split_file)
    fit_presets = two_stage_presets if verdict == "two_stage" else weighted_presets
    return {
        "temperature": temperature,
        "presets": fit_presets(val_probs, val["labels"], clinical),
        "val_ece_before": expected_calibration_error(calibrated_probabilities(val["logits"], 1.0), val["labels"]),
        "val_ece_after": expected_calibration_error(val_probs, val["labels"]),
    }


def weighted_presets(val_probs: np.ndarray, labels: np.ndarray, clinical: np.ndarray) -> dict[str, dict]:
    """The older rule: decision weights for balanced accuracy (the rare classes' say), a
    fracture-sensitive threshold, and uncertainty thresholds, all from validation."""
    weights = fit_class_weights(val_probs, labels)
    presets: dict[str, dict[str, Any]] = {
        "balanced": {"class_weights": weights, "any_fracture_threshold": None},
        "fracture_sensitive": {
            "class_weights": weights,
            "any_fracture_threshold": any_fracture_threshold(val_probs[clinical], labels[clinical]),
            "target_val_recall_any_fracture": SENSITIVE_TARGET_RECALL,
            "threshold_fitted_on": "FracAtlas validation films",
        },
    }
    for preset in presets.values():  # "uncertain: needs review" thresholds, also from validation
        preset.update(fit_uncertainty_thresholds(val_probs, labels, preset))
    return presets


def evaluate(args: argparse.Namespace, out_dir: Path) -> dict:
    """Calibrate and fit the presets on validation, then measure the test split once; writes
    metrics.json, metrics.md, the plots and the test logits to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_split(args.split)
    test_rows = [r for r in (quick_subset(rows) if args.quick else rows) if r["split"] == "test"]
    images = build_image_cache(test_rows, args.data_dir, args.cache_dir)
    y = np.array([CLASSES.index(r["label"]) for r in test_rows])
    calibration = validation_fit(args.run, args.split, args.verdict)
    logits = model_logits(keras.saving.load_model(args.run / "model.keras", compile=False), images)
    report = test_metrics(y, logits, calibration, test_rows, args)
    probs = calibrated_probabilities(logits, calibration["temperature"])
    pred = labels_from(probs, calibration["presets"]["balanced"])
    report["plots"] = plots(out_dir, y, calibrated_probabilities(logits, 1.0), probs, pred)
    np.savez(out_dir / "test_logits.npz", logits=logits, labels=y, sha256=np.array([r["sha256"] for r in test_rows]))
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    (out_dir / "metrics.md").write_text(markdown_report(report))
    return report


def test_metrics(y: np.ndarray, logits: np.ndarray, calibration: dict, test_rows: list[dict], args) -> dict:
    """The test split's figures with bootstrap CIs: overall, per preset, per source and body part."""
    temperature, presets = calibration["temperature"], calibration["presets"]
    probs = calibrated_probabilities(logits, temperature)
    pred = labels_from(probs, presets["balanced"])
    pred_sensitive = labels_from(probs, presets["fracture_sensitive"])
    rounds = 200 if args.quick else BOOTSTRAP_ROUNDS
    sources = np.array([r["source"] for r in test_rows])
    majority = np.bincount(y, minlength=3).argmax()
    return {
        "n_test": int(len(y)),
        "temperature": temperature,
        "presets": presets,
        "ece_before": expected_calibration_error(calibrated_probabilities(logits, 1.0), y),
        "ece_after": expected_calibration_error(probs, y),
        "val_ece_before": calibration["val_ece_before"],
        "val_ece_after": calibration["val_ece_after"],
        "majority_class_baseline": core_metrics(
            y, np.tile(np.eye(3)[majority], (len(y), 1)), np.full(len(y), majority)
        ),
        "overall": with_ci(y, probs, pred, rounds),
        "overall_fracture_sensitive": with_ci(y, probs, pred_sensitive, rounds),
        "by_source": by_source(y, probs, pred, pred_sensitive, sources, rounds),
        "fracatlas_by_body_part": by_body_part(y, probs, pred, test_rows, read_body_part_flags(args.data_dir)),
        "selective": {name: selective_metrics(y, probs, preset, rounds) for name, preset in presets.items()},
    }


def by_source(
    y: np.ndarray,
    probs: np.ndarray,
    pred: np.ndarray,
    pred_sensitive: np.ndarray,
    sources: np.ndarray,
    rounds: int,
) -> dict:
    found = {}
    for source in ("fracatlas", "bone_break"):
        sel = sources == source
        if sel.any():
            found[source] = with_ci(y[sel], probs[sel], pred[sel], rounds)
            found[source + "_fracture_sensitive"] = with_ci(y[sel], probs[sel], pred_sensitive[sel], rounds)
    return found


def by_body_part(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, test_rows: list[dict], flags: dict) -> dict:
    """FracAtlas test films by the dataset's body-part flags (parts with at least 5 films)."""
    found = {}
    for flag in BODY_PART_FLAGS:
        sel = np.array(
            [r["source"] == "fracatlas" and flags.get(Path(r["path"]).name, {}).get(flag) == "1" for r in test_rows]
        )
        if sel.sum() >= 5:
            found[flag] = core_metrics(y[sel], probs[sel], pred[sel])
    return found


def _fmt(block: dict, key: str) -> str:
    value = block["point"].get(key)
    if value is None:
        return "n/a"
    ci = block.get("ci95", {}).get(key)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def markdown_report(report: dict) -> str:
    keys = [
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_auroc",
        "binary_auroc",
        "binary_recall_any_fracture",
        "binary_specificity",
        "binary_sensitivity_at_specificity_0.85",
    ] + [f"{m}_{c}" for c in CLASSES for m in ("precision", "recall", "auroc")]
    columns = [("all test", report["overall"]), ("all, fracture-sensitive", report["overall_fracture_sensitive"])]
    columns += [(name.replace("_", " "), block) for name, block in report["by_source"].items()]
    lines = [
        f"Test split: {report['n_test']} images. Values: point estimate [bootstrap 95% CI].",
        "",
        "| metric | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_fmt(block, key) for _, block in columns) + " |")
    base = report["majority_class_baseline"]
    lines += [
        "",
        f"Majority-class baseline (always `{CLASSES[int(np.argmax([base[f'support_{c}'] for c in CLASSES]))]}`): "
        f"accuracy {base['accuracy']:.3f}, balanced accuracy {base['balanced_accuracy']:.3f}.",
        f"Temperature {report['temperature']:.3f} (fitted on validation). Test ECE "
        f"{report['ece_before']:.3f} before, {report['ece_after']:.3f} after temperature scaling.",
        "",
    ] + preset_lines(report)
    lines += [
        "",
        "FracAtlas test images by body-part flag (balanced preset):",
        "",
        "| flag | n | accuracy | binary AUROC | recall any fracture |",
        "|---|---|---|---|---|",
    ]
    for flag, m in report["fracatlas_by_body_part"].items():
        lines.append(
            f"| {flag} | {m['n']} | {m['accuracy']:.3f} | {m.get('binary_auroc', float('nan')):.3f} | "
            f"{m.get('binary_recall_any_fracture', float('nan')):.3f} |"
        )
    return "\n".join(lines) + "\n"


def two_stage_cells(preset: dict) -> str:
    return (
        f"{preset['fracture_threshold']:.3f} | {preset['fracture_band']:.2f} | "
        f"{preset['severity_threshold']:.3f} | {preset['severity_margin']:.2f}"
    )


def weighted_cells(preset: dict) -> str:
    return f"{preset['min_confidence']:.2f} | {preset['min_margin']:.2f}"


def preset_lines(report: dict) -> list[str]:
    """The presets and their uncertainty flag on validation and test, as markdown lines."""
    presets, selective = report["presets"], report.get("selective", {})
    if presets["balanced"].get("rule") == "two_stage":
        lines = [
            "Two-stage verdict: a fracture when P(any fracture) >= the preset's threshold (fitted on the "
            "FracAtlas validation films: balanced maximises sensitivity + specificity, fracture-sensitive keeps "
            f"recall >= {SENSITIVE_TARGET_RECALL}); then beyond repair when P(beyond repair | fracture) >= the "
            'severity threshold. "Uncertain: needs review" inside a band around the fracture threshold '
            "(logit units) or the severity margin, the narrowest keeping "
            f"{presets['balanced']['target_val_covered_accuracy']:.0%} accuracy on covered validation films.",
            "",
            "| preset | fracture threshold | band (logit) | severity threshold | severity margin | "
            "validation coverage | test coverage | test accuracy on covered | test accuracy on all |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        cells = two_stage_cells
    else:
        lines = [
            f"Fracture-sensitive threshold on P(any fracture): "
            f"{presets['fracture_sensitive']['any_fracture_threshold']:.3f} "
            f"(recall of any fracture >= {SENSITIVE_TARGET_RECALL} on the FracAtlas validation films).",
            "",
            'Uncertainty flag ("uncertain: needs review" when the verdict\'s probability is below '
            "min_confidence or its lead over the next class is below min_margin; both chosen on "
            "validation for the largest coverage at >= "
            f"{presets['balanced']['target_val_covered_accuracy']:.0%} accuracy on covered images):",
            "",
            "| preset | min_confidence | min_margin | validation coverage | test coverage | "
            "test accuracy on covered | test accuracy on all |",
            "|---|---|---|---|---|---|---|",
        ]
        cells = weighted_cells
    for name, sel in selective.items():
        preset = presets[name]
        lines.append(
            f"| {name} | {cells(preset)} | "
            f"{preset['val_coverage']:.3f} | {sel['coverage']:.3f} [{sel['ci95']['coverage'][0]:.3f}, "
            f"{sel['ci95']['coverage'][1]:.3f}] | {sel['covered_accuracy']:.3f} "
            f"[{sel['ci95']['covered_accuracy'][0]:.3f}, {sel['ci95']['covered_accuracy'][1]:.3f}] | "
            f"{sel['accuracy_all']:.3f} |"
        )
    return lines


def main(argv=None) -> None:
    parser = run_step_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--verdict",
        choices=("two_stage", "weighted"),
        default="two_stage",
        help="two_stage: fracture or not, then severity (the default); weighted: the older class-weighted argmax",
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="fit the temperature and presets on validation and stop: a candidate that is "
        "compared on validation and the unseen-source checks, not yet tested",
    )
    args = parser.parse_args(argv)
    if args.validation_only:
        out = args.out or args.run / "eval"
        out.mkdir(parents=True, exist_ok=True)
        fitted = {**validation_fit(args.run, args.split, args.verdict), "validation_only": True}
        (out / "metrics.json").write_text(json.dumps(fitted, indent=1))
        print(json.dumps(fitted["presets"], indent=1))
        return
    report = evaluate(args, args.out or args.run / "eval")
    print(markdown_report(report))


if __name__ == "__main__":
    main()
