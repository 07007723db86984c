"""Is a faster engine as good as float32 on the clinical question? The equivalence check.

Usage: python -m training.release.equivalence [--bundle-dir model] [--write]

Candidates, converted from the bundle's .keras file: LiteRT int8 dynamic range (int8 weights,
activations quantized on the fly) and LiteRT full integer (activations calibrated on
--representative training-split images). Each is compared with the bundle's float32 LiteRT
engine on the test split and on the unseen-source knee check (../shared/data/knee_oai/,
measured only), through the serving arithmetic (temperature, presets, feature guard):

- binary AUROC (healthy vs any fracture) within 0.005 of float32, for FracAtlas and overall;
- the same verdict under each preset for >= 99 % of images;
- ECE <= 0.05 on test, with the candidate's own temperature fitted on validation when the
  shared one misses it;
- the uncertain and not-an-X-ray (feature guard) flags agreeing for >= 98 % of images (the
  guard's pixel screen runs before the model, so it cannot differ and is left out).

It also times each engine (batch 1 and batch 8, median). --write copies the fastest passing
candidate into the bundle as serving_int8.tflite and records the figures in metadata.json
(runtime_int8) and the model card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from training.calibrate import expected_calibration_error, fit_temperature
from training.data import CLASSES, DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir, read_split
from training.features import build_image_cache
from training.knee_check import knee_files
from training.litert import convert
from utils.core.bundle import DEFAULT_BUNDLE_DIR, Bundle, load_bundle, sha256_of
from utils.core.classifier import prepare_input
from utils.core.engines import LiteRTEngine
from utils.core.inference import calibrated_probabilities, decide, to_model_input

CRITERIA = {"auroc_delta": 0.005, "verdict_agreement": 0.99, "ece": 0.05, "flag_agreement": 0.98}
INT8_FILE = "serving_int8.tflite"


def engine_outputs(engine, inputs: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, 3), pooled features (N, D)) of (N, S, S) uint8 model inputs."""
    logits, features = [], []
    for i in range(0, len(inputs), batch_size):
        out = engine(to_model_input(inputs[i : i + batch_size, ..., None]))
        logits.append(np.asarray(out["logits"], np.float64))
        features.append(np.asarray(out["features"], np.float32))
    return np.concatenate(logits), np.concatenate(features)


def decisions(probs: np.ndarray, distances: np.ndarray, metadata: dict, threshold: float) -> dict:
    """Per preset: the verdict and uncertain flag of every image, and the guard's flag."""
    flagged = distances > threshold
    out: dict[str, Any] = {"not_xray": flagged}
    for name, preset in metadata["presets"].items():
        labels, uncertain = zip(*(decide(p, preset) for p in probs))
        out[name] = {"label": np.array(labels), "uncertain": np.array(uncertain) | flagged}
    return out


def binary_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(roc_auc_score(labels != 0, 1.0 - probs[:, 0]))


def compare(reference: dict, candidate: dict, presets: list[str]) -> dict:
    """Agreement of a candidate's decisions with the reference's on one image set."""
    verdict = {name: float((reference[name]["label"] == candidate[name]["label"]).mean()) for name in presets}
    uncertain = {name: float((reference[name]["uncertain"] == candidate[name]["uncertain"]).mean()) for name in presets}
    return {
        "verdict_agreement": verdict,
        "uncertain_agreement": uncertain,
        "not_xray_agreement": float((reference["not_xray"] == candidate["not_xray"]).mean()),
    }


def load_sets(args) -> dict:
    rows = read_split(args.split)
    sets = {}
    for split in ("val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        sets[split] = {
            "images": build_image_cache(chosen, args.data_dir, args.cache_dir),
            "labels": np.array([CLASSES.index(r["label"]) for r in chosen]),
            "fracatlas": np.array([r["source"] == "fracatlas" for r in chosen]),
        }
    if args.representative:  # training films that calibrate a full-integer engine
        train = [r for r in rows if r["split"] == "train"]
        pick = np.random.default_rng(0).choice(len(train), args.representative, replace=False)
        sets["representative"] = {
            "images": build_image_cache([train[i] for i in sorted(pick)], args.data_dir, args.cache_dir)
        }
    knee = [prepare_input(str(p), p.read_bytes(), args.input_size) for p in knee_files(args.data_dir, args.knee_limit)]
    sets["knee"] = {"images": np.stack([p.model_input for p in knee if p.error is None and p.model_input is not None])}
    return sets


def median_ms(engine, inputs: np.ndarray, batch: int, repeats: int = 20) -> float:
    x = to_model_input(inputs[:batch, ..., None])
    for _ in range(3):
        engine(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3 / batch)


def evaluate_engine(engine, sets: dict, bundle, reference: dict | None = None) -> dict:
    metadata, guard = bundle.metadata, bundle.guard
    result: dict[str, Any] = {
        "timing_ms_per_image": {
            "batch_1": median_ms(engine, sets["test"]["images"], 1),
            "batch_8": median_ms(engine, sets["test"]["images"], 8),
        }
    }
    outputs = {name: engine_outputs(engine, sets[name]["images"]) for name in ("val", "test", "knee")}
    temperature = bundle.temperature
    test = sets["test"]
    ece = expected_calibration_error(calibrated_probabilities(outputs["test"][0], temperature), test["labels"])
    if ece > CRITERIA["ece"]:  # its own temperature, fitted on validation only
        temperature = fit_temperature(outputs["val"][0], sets["val"]["labels"])
    result["temperature"] = float(temperature)
    result["own_temperature"] = temperature != bundle.temperature
    probs = {name: calibrated_probabilities(outputs[name][0], temperature) for name in outputs}
    result["ece_test"] = expected_calibration_error(probs["test"], test["labels"])
    result["binary_auroc_test"] = binary_auroc(test["labels"], probs["test"])
    result["binary_auroc_test_fracatlas"] = binary_auroc(
        test["labels"][test["fracatlas"]], probs["test"][test["fracatlas"]]
    )
    result["decisions"] = {
        name: decisions(probs[name], guard.distance(outputs[name][1]), metadata, guard.threshold)
        for name in ("test", "knee")
    }
    if reference is not None:
        presets = list(metadata["presets"])
        result["agreement"] = {
            name: compare(reference["decisions"][name], result["decisions"][name], presets) for name in ("test", "knee")
        }
        result["auroc_delta"] = {
            "overall": abs(result["binary_auroc_test"] - reference["binary_auroc_test"]),
            "fracatlas": abs(result["binary_auroc_test_fracatlas"] - reference["binary_auroc_test_fracatlas"]),
        }
        agreements = result["agreement"]
        result["passes"] = {
            "auroc_delta": max(result["auroc_delta"].values()) <= CRITERIA["auroc_delta"],
            "verdict_agreement": min(v for a in agreements.values() for v in a["verdict_agreement"].values())
            >= CRITERIA["verdict_agreement"],
            "ece": result["ece_test"] <= CRITERIA["ece"],
            "flag_agreement": min(
                [v for a in agreements.values() for v in a["uncertain_agreement"].values()]
                + [a["not_xray_agreement"] for a in agreements.values()]
            )
            >= CRITERIA["flag_agreement"],
        }
        result["passed"] = all(result["passes"].values())
    return result


def markdown(results: dict, n: dict) -> str:
    lines = [
        f"Test split {n['test']} images, knee check {n['knee']} images (nothing fitted on it). Criteria: "
        f"binary AUROC within {CRITERIA['auroc_delta']} of float32 (FracAtlas and overall), the same verdict "
        f"under each preset for >= {CRITERIA['verdict_agreement']:.0%}, ECE <= {CRITERIA['ece']}, the uncertain "
        f"and not-an-X-ray flags agreeing for >= {CRITERIA['flag_agreement']:.0%}.",
        "",
        "| engine | ms/image (batch 1) | ms/image (batch 8) | test AUROC | FracAtlas AUROC | ECE | temperature | "
        "same verdict, test (balanced / sensitive) | same verdict, knee | flags agree, test | flags agree, knee | "
        "passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        a = r.get("agreement")

        def pair(block):
            return " / ".join(f"{v:.1%}" for v in block["verdict_agreement"].values())

        def flags(block):
            return f"{min(list(block['uncertain_agreement'].values()) + [block['not_xray_agreement']]):.1%}"

        if a:  # the reference row has nothing to pass
            failed = ", ".join(k for k, v in r["passes"].items() if not v)
            verdict = "yes" if r["passed"] else "no: " + failed
        lines.append(
            f"| {name} | {r['timing_ms_per_image']['batch_1']:.1f} | {r['timing_ms_per_image']['batch_8']:.1f} | "
            f"{r['binary_auroc_test']:.4f} | {r['binary_auroc_test_fracatlas']:.4f} | {r['ece_test']:.3f} | "
            f"{r['temperature']:.3f}{' (own)' if r['own_temperature'] else ''} | "
            f"{pair(a['test']) if a else '-'} | {pair(a['knee']) if a else '-'} | "
            f"{flags(a['test']) if a else '-'} | {flags(a['knee']) if a else '-'} | "
            f"{verdict if a else 'reference'} |"
        )
    return "\n".join(lines) + "\n"


def summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "decisions"}


CARD_MARKER = "## Faster engine: the equivalence check"


def write_card_section(bundle_dir: Path, body: str) -> None:
    """Replace (or append) the model card's equivalence section."""
    card = bundle_dir / "MODEL_CARD.md"
    text = card.read_text()
    if CARD_MARKER in text:
        text = text[: text.index(CARD_MARKER)]
    card.write_text(text.rstrip() + f"\n\n{CARD_MARKER}\n\n" + body)


def record_check(bundle_dir: Path, key: str, entry: dict, results: dict, stale: str) -> None:
    """metadata[key] = entry plus the check's figures; the other outcome's key (stale) goes."""
    metadata_path = bundle_dir / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata.pop(stale, None)
    metadata[key] = {
        **entry,
        "criteria": CRITERIA,
        "equivalence": {k: summary(v) for k, v in results.items()},
        "command": "python -m training.release.equivalence --write",
    }
    metadata_path.write_text(json.dumps(metadata, indent=1, default=float) + "\n")


def write_float32_only(bundle_dir: Path, results: dict, table: str) -> None:
    """No candidate passed: the bundle keeps no int8 engine (an older one belongs to another
    model); its metadata (int8_check) and card keep the figures that say why."""
    (bundle_dir / INT8_FILE).unlink(missing_ok=True)
    record_check(bundle_dir, "int8_check", {"passed": False}, results, stale="runtime_int8")
    write_card_section(
        bundle_dir,
        "No int8 candidate passed, so every serving path (app, CLI, PACS, Ray) runs the float32 LiteRT "
        "engine (`serving.tflite`); `--precision int8` is refused for this bundle.\n\n" + table,
    )


def write_bundle(bundle_dir: Path, candidate: Path, name: str, results: dict, table: str) -> None:
    target = bundle_dir / INT8_FILE
    shutil.copyfile(candidate, target)
    engine = {
        "file": INT8_FILE,
        "sha256": sha256_of(target),
        "format": f"LiteRT flatbuffer, {name}",
        "engine": "ai-edge-litert (XNNPACK); --precision int8 in the CLI and Ray",
        "temperature": results[name]["temperature"],
    }
    record_check(bundle_dir, "runtime_int8", engine, results, stale="int8_check")
    write_card_section(
        bundle_dir,
        f"`{INT8_FILE}` ({name}) passed and is the default engine of every serving path "
        "(app, CLI, PACS, Ray) on this bundle; `BONE_XRAY_PRECISION=float32` or `--precision float32` chooses "
        "the float32 one.\n\n" + table,
    )


def set_parser(description: str, representative: int) -> argparse.ArgumentParser:
    """The arguments of the bundle and the image sets load_sets reads, which every int8 check
    and study shares; representative: how many training films calibrate (0: none)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle-dir", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--representative", type=int, default=representative)
    parser.add_argument("--knee-limit", type=int)
    return parser


def bundle_to_convert(args: argparse.Namespace) -> tuple[Bundle, Path, Path]:
    """(the bundle, its .keras file, its float32 LiteRT file); args gains the bundle's input size.
    Exits with a sentence when either file is missing: a check converts one and compares with the other."""
    bundle = load_bundle(args.bundle_dir, load_keras=False)
    if bundle.model_path is None or bundle.litert_path is None:
        raise SystemExit(f"{args.bundle_dir} lacks its .keras or its LiteRT file: the check needs both")
    args.input_size = bundle.input_size
    return bundle, bundle.model_path, bundle.litert_path


def main(argv=None) -> dict:
    parser = set_parser(__doc__.splitlines()[0], representative=100)
    parser.add_argument("--write", action="store_true", help="ship the fastest passing candidate in the bundle")
    parser.add_argument("--out", type=Path, default=Path("artifacts/equivalence.json"))
    args = parser.parse_args(argv)
    bundle, model_path, litert_path = bundle_to_convert(args)
    sets = load_sets(args)
    results = {"float32 (shipped)": evaluate_engine(LiteRTEngine(litert_path), sets, bundle)}
    reference = results["float32 (shipped)"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "int8 dynamic range": convert(model_path, Path(tmp) / "dynamic.tflite", int8=True),
            "int8 full integer": convert(
                model_path, Path(tmp) / "full.tflite", int8=True, representative=sets["representative"]["images"]
            ),
        }
        for name, path in files.items():
            results[name] = evaluate_engine(LiteRTEngine(path), sets, bundle, reference)
            print(name, json.dumps(summary(results[name]), default=float))
        table = markdown(results, {"test": len(sets["test"]["images"]), "knee": len(sets["knee"]["images"])})
        print(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({k: summary(v) for k, v in results.items()}, indent=1, default=float))
        passing = [n for n in files if results[n]["passed"]]
        if args.write and passing:
            best = min(passing, key=lambda n: results[n]["timing_ms_per_image"]["batch_8"])
            write_bundle(args.bundle_dir, files[best], best, results, table)
            print(f"wrote {best} to {args.bundle_dir / INT8_FILE}")
        elif args.write:
            write_float32_only(args.bundle_dir, results, table)
            print(f"no candidate passed: {args.bundle_dir} serves float32 only")
    return results


if __name__ == "__main__":
    main()
