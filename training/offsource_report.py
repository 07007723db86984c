"""Films from other hospitals: the three unseen-source checks through the serving path.

For a shipped bundle or a trained run, every film of knee_oai/ (1,000 healthy knees),
wrist_check/ (42 healthy wrists) and hbfmid_check/ (82 fractures, 5 healthy) goes through
bytes -> utils.core.classifier (guard included), and this reports per preset:
- healthy sources: the share called healthy and not uncertain, given a confident fracture
  verdict, labelled beyond repair, flagged (not a radiograph / unlike the training films);
- hbfmid_check: fracture recall (label not healthy), confident recall, flagged, and the
  pointing game (is the fracture map's maximum inside a fracture box);
- the off-source AUROC of P(any fracture): hbfmid_check fractures against each healthy source,
  and the worst of them.
Nothing is fitted here; presets come from the bundle or from the run's validation fit.

Usage: python -m training.offsource_report --bundle-dir model [--presets-from artifacts/RUN] [--tta]
       python -m training.offsource_report --run artifacts/RUN
Writes <run>/offsource.json (or --out FILE) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from training.data import default_data_dir
from training.offsource import FRACTURE_SOURCE, HEALTHY_SOURCES, check_rows, offsource_aurocs
from training.run_folder import classifier_for_run
from utils.core.bundle import load_bundle
from utils.core.classifier import Classifier
from utils.core.guard import (
    is_confident_not_radiograph,
)
from utils.core.heatmap import upsample_heatmap
from utils.core.preprocess import decode_for_model, preprocess_with_geometry


def classify_check(classifier, rows: list[dict], preset: str = "balanced"):
    return classifier.predict_many(
        [(r["path"], Path(r["file"]).read_bytes()) for r in rows], preset=preset, batch_size=16
    )


def outcome_shares(predictions, preset: dict) -> dict:
    """Shares of the films by outcome under one preset."""
    counts = {
        "healthy_confident": 0,
        "fracture_confident": 0,
        "uncertain": 0,
        "beyond_repair": 0,
        "not_healthy": 0,
        "not_radiograph": 0,
        "unfamiliar": 0,
        "error": 0,
        "argmax_healthy": 0,
    }
    for p in predictions:
        if p.error:
            counts["error"] += 1
            continue
        verdict = p.decide(preset)
        label, uncertain = verdict.label, verdict.uncertain
        counts["uncertain"] += uncertain
        counts["healthy_confident"] += label == "healthy" and not uncertain
        counts["fracture_confident"] += label != "healthy" and not uncertain
        counts["beyond_repair"] += label == "beyond_repair"
        counts["not_healthy"] += label != "healthy"
        counts["argmax_healthy"] += max(p.probabilities, key=p.probabilities.get) == "healthy"
        if p.not_xray is not None:
            counts["not_radiograph" if is_confident_not_radiograph(p.not_xray) else "unfamiliar"] += 1
    n = max(len(predictions), 1)
    return {"n": len(predictions), **{k: v / n for k, v in counts.items()}}


def hbfmid_boxes(data_dir: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    boxes: dict[str, list] = {}
    path = data_dir / FRACTURE_SOURCE / "boxes.csv"
    if path.exists():
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                boxes.setdefault(row["path"], []).append(tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1")))
    return boxes


def pointing_game(predictions, rows: list[dict], boxes: dict) -> dict:
    """Share of fractured films with boxes whose heatmap maximum falls inside a box, the boxes
    mapped through the preprocessing geometry (utils.core.preprocess)."""
    hits = []
    for prediction, row in zip(predictions, rows):
        if row["label"] == "healthy" or row["path"] not in boxes or prediction.heatmaps is None:
            continue
        decoded = decode_for_model(Path(row["file"]).read_bytes())
        image, geometry = preprocess_with_geometry(decoded.pixels)
        size = image.shape[0]
        scale_y, scale_x = decoded.pixels.shape[0] / float(row["height"]), decoded.pixels.shape[1] / float(row["width"])
        mask = np.zeros((size, size), bool)
        for x0, y0, x1, y1 in boxes[row["path"]]:
            mx, my = geometry.to_model(np.array([x0 * scale_x, x1 * scale_x]), np.array([y0 * scale_y, y1 * scale_y]))
            r0, r1 = int(np.floor(max(min(my), 0))), int(np.ceil(max(my)))
            c0, c1 = int(np.floor(max(min(mx), 0))), int(np.ceil(max(mx)))
            mask[r0:r1, c0:c1] = True
        if not mask.any():
            continue
        heat = upsample_heatmap(prediction.heatmap("fractured"), (size, size))
        hits.append(bool(mask[np.unravel_index(int(np.argmax(heat)), heat.shape)]))
    return {"n_images": len(hits), "hit_rate": float(np.mean(hits)) if hits else None}


def report(classifier, data_dir: Path, limit: int | None = None) -> dict:
    presets = dict(classifier.bundle.metadata["presets"])
    result: dict = {"presets": {}, "sources": {}}
    predictions, rows_of, p_any, labels = {}, {}, {}, {}
    for source in HEALTHY_SOURCES + (FRACTURE_SOURCE,):
        rows = check_rows(data_dir, source)[:limit]
        if not rows:
            continue
        rows_of[source], predictions[source] = rows, classify_check(classifier, rows)
        p_any[source] = np.array(
            [1.0 - p.probabilities["healthy"] if p.probabilities else np.nan for p in predictions[source]]
        )
        labels[source] = [r["label"] for r in rows]
        result["sources"][source] = len(rows)
    fractured_only = {
        s: [p for p, r in zip(predictions[s], rows_of[s]) if r["label"] != "healthy"] for s in predictions
    }
    for name, preset in presets.items():
        block = {s: outcome_shares(predictions[s], preset) for s in HEALTHY_SOURCES if s in predictions}
        if FRACTURE_SOURCE in predictions:
            block[FRACTURE_SOURCE + "_fractures"] = outcome_shares(fractured_only[FRACTURE_SOURCE], preset)
        result["presets"][name] = block
    if FRACTURE_SOURCE in predictions:
        valid = {s: ~np.isnan(v) for s, v in p_any.items()}
        result["aurocs"] = offsource_aurocs(
            {s: v[valid[s]] for s, v in p_any.items()}, {s: list(np.array(labels[s])[valid[s]]) for s in labels}
        )
        result["pointing_game"] = pointing_game(
            predictions[FRACTURE_SOURCE], rows_of[FRACTURE_SOURCE], hbfmid_boxes(data_dir)
        )
        result["median_p_any_fracture"] = {
            s: float(np.nanmedian(v[np.array(labels[s]) != "healthy"] if s == FRACTURE_SOURCE else v))
            for s, v in p_any.items()
        }
    return result


def markdown(result: dict) -> str:
    a = result.get("aurocs", {})
    medians = {k: round(v, 3) for k, v in result.get("median_p_any_fracture", {}).items()}
    lines = [
        f"Off-source AUROC (worst): {a.get('offsource_auroc', float('nan')):.3f} "
        f"(vs knee_oai {a.get('auroc_vs_knee_oai', float('nan')):.3f}, "
        f"vs wrist_check {a.get('auroc_vs_wrist_check', float('nan')):.3f}; "
        f"pooled {a.get('auroc_pooled', float('nan')):.3f}); "
        f"hbfmid pointing game {result.get('pointing_game', {}).get('hit_rate', float('nan')):.1%}; "
        f"median P(any fracture) {json.dumps(medians)}",
        "",
        "| preset | check | n | healthy, not uncertain | confident fracture | not healthy (recall for fractures) | "
        "beyond repair | uncertain | not a radiograph | unlike training films | argmax healthy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, block in result["presets"].items():
        for check, r in block.items():
            lines.append(
                f"| {name} | {check} | {r['n']} | {r['healthy_confident']:.1%} | {r['fracture_confident']:.1%} | "
                f"{r['not_healthy']:.1%} | {r['beyond_repair']:.1%} | {r['uncertain']:.1%} | "
                f"{r['not_radiograph']:.1%} | {r['unfamiliar']:.1%} | {r['argmax_healthy']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path)
    where.add_argument("--bundle-dir", type=Path)
    parser.add_argument(
        "--presets-from",
        type=Path,
        help="a run folder whose eval/metrics.json presets replace "
        "the bundle's (the two-stage verdict on an older bundle)",
    )
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--limit", type=int, help="only the first N films of each check (a quick look)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.run and not (args.presets_from or args.out):
        result = report_run(args.run, args.data_dir, args.limit)
        print(markdown(result))
        return result
    if args.run:
        classifier = classifier_for_run(args.run)
    else:
        classifier = Classifier(load_bundle(args.bundle_dir))
    if args.presets_from:
        metrics = json.loads((args.presets_from / "eval" / "metrics.json").read_text())
        classifier.bundle.metadata["presets"] = metrics["presets"]
    result = report(classifier, args.data_dir, args.limit)
    out = args.out or (args.run / "offsource.json" if args.run else None)
    if out:
        out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return result


def report_run(run: Path, data_dir: Path, limit: int | None = None) -> dict:
    """The three unseen-source checks of a run through the serving path, written to RUN/offsource.json."""
    result = report(classifier_for_run(run), data_dir, limit)
    (run / "offsource.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
