"""Is a faster engine as good as float32 on the clinical question? The equivalence check.

Usage: python -m training.release.equivalence [--bundle-dir model] [--write]
    [--quantization-aware artifacts/qat/model.keras ...]

Candidates, converted from the bundle's .keras file: LiteRT int8 dynamic range (int8 weights,
activations quantized on the fly) and LiteRT full integer (activations calibrated on
--representative training-split images); with --quantization-aware, also int8 dynamic range
from each file given (the bundle's model fine-tuned by training.quantization.distill to answer in int8
as the float32 engine does). Each is compared with the bundle's float32 LiteRT
engine on the test split and on the unseen-source knee check (../shared/data/knee_oai/,
measured only), through the serving arithmetic (temperature, presets, feature guard):

- binary AUROC (healthy vs any fracture) within 0.005 of float32, for FracAtlas and overall;
- the same verdict under each preset for >= 99 % of images;
- ECE <= 0.05 on test, with the candidate's own temperature fitted on validation when the
  shared one misses it;
- the uncertain and not-an-X-ray (feature guard) flags agreeing for >= 98 % of images (the
  guard's pixel screen runs before the model, so it cannot differ and is left out).

The agreement on wrist_check and hbfmid_check, the validation AUROC and the off-source AUROC
are reported beside them (measured only, not judged). A quantization-aware candidate's
weights are a new model, so it also answers to the model-shipping rule: its validation AUROC and
its off-source AUROC above float32's.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from training.calibrate import expected_calibration_error, fit_temperature
from training.data import CLASSES, DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir, read_split
from training.features import build_image_cache
from training.knee_check import knee_files
from training.litert import convert
from training.offsource import check_images, offsource_aurocs
from training.quantization.distill import read_export
from training.quantization.selective import DEFAULT_FLOAT_LAYERS, convert_selective
from training.release.machine import describe_machine
from utils.core.bundle import DEFAULT_BUNDLE_DIR, Bundle, load_bundle, sha256_of
from utils.core.classifier import prepare_input
from utils.core.engines import LiteRTEngine
from utils.core.inference import calibrated_probabilities, decide, to_model_input

CRITERIA = {"auroc_delta": 0.005, "verdict_agreement": 0.99, "ece": 0.05, "flag_agreement": 0.98}
INT8_FILE = "serving_int8.tflite"
QUANTIZATION_AWARE = "int8 dynamic range, quantization-aware"


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
    # A confident answer the reference did not give: the candidate is sure where the reference
    # either said something else or asked for review. The other disagreements ask for a review
    # the reference did not ask for, which costs a reader's look but misleads no one.
    confident_change = {
        name: float(
            (
                ~candidate[name]["uncertain"]
                & (reference[name]["uncertain"] | (reference[name]["label"] != candidate[name]["label"]))
            ).mean()
        )
        for name in presets
    }
    return {
        "verdict_agreement": verdict,
        "uncertain_agreement": uncertain,
        "not_xray_agreement": float((reference["not_xray"] == candidate["not_xray"]).mean()),
        "confident_change": confident_change,
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
    reported = {"wrist": "wrist_check", "hbfmid": "hbfmid_check"}
    checks = check_images(args.data_dir, args.cache_dir, size=args.input_size, folders=tuple(reported.values()))
    for name, folder in reported.items():
        if folder in checks:  # measured only, like the knees
            sets[name] = {"images": checks[folder]["images"], "labels": checks[folder]["labels"]}
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


JUDGED = ("test", "knee")  # the sets the criteria are judged on
REPORTED = ("wrist", "hbfmid")  # the other unseen-source checks: agreement reported, not judged


def evaluate_engine(engine, sets: dict, bundle, reference: dict | None = None, own_weights: bool = False) -> dict:
    result: dict[str, Any] = {
        "timing_ms_per_image": {
            "batch_1": median_ms(engine, sets["test"]["images"], 1),
            "batch_8": median_ms(engine, sets["test"]["images"], 8),
        }
    }
    names = ["val", *JUDGED, *(name for name in REPORTED if name in sets)]
    outputs = {name: engine_outputs(engine, sets[name]["images"]) for name in names}
    temperature = bundle.temperature
    test = sets["test"]
    ece = expected_calibration_error(calibrated_probabilities(outputs["test"][0], temperature), test["labels"])
    if ece > CRITERIA["ece"]:  # its own temperature, fitted on validation only
        temperature = fit_temperature(outputs["val"][0], sets["val"]["labels"])
    result["temperature"] = float(temperature)
    result["own_temperature"] = temperature != bundle.temperature
    probs = {name: calibrated_probabilities(outputs[name][0], temperature) for name in outputs}
    result["ece_test"] = expected_calibration_error(probs["test"], test["labels"])
    result["binary_auroc_val"] = binary_auroc(sets["val"]["labels"], probs["val"])
    result["binary_auroc_test"] = binary_auroc(test["labels"], probs["test"])
    result["binary_auroc_test_fracatlas"] = binary_auroc(
        test["labels"][test["fracatlas"]], probs["test"][test["fracatlas"]]
    )
    if "hbfmid" in probs:
        result["offsource"] = offsource_figures(probs, sets)
    result["decisions"] = {
        name: decisions(probs[name], bundle.guard.distance(outputs[name][1]), bundle.metadata, bundle.guard.threshold)
        for name in names
        if name != "val"
    }
    if reference is not None:
        judge(result, reference, list(bundle.metadata["presets"]), own_weights)
    return result


def offsource_figures(probs: dict, sets: dict) -> dict:
    """The off-source AUROC: hbfmid_check's fractures against the knees and the wrists."""
    p_fracture = {"knee_oai": 1.0 - probs["knee"][:, 0], "hbfmid_check": 1.0 - probs["hbfmid"][:, 0]}
    labels = {"knee_oai": ["healthy"] * len(probs["knee"]), "hbfmid_check": sets["hbfmid"]["labels"]}
    if "wrist" in probs:
        p_fracture["wrist_check"], labels["wrist_check"] = 1.0 - probs["wrist"][:, 0], sets["wrist"]["labels"]
    return offsource_aurocs(p_fracture, labels)


def beats_reference(result: dict, reference: dict) -> bool:
    """The model-shipping rule: new weights ship only when they beat the shipped model on
    validation and on the unseen-source check (here its AUROCs; without the check, never)."""
    if "offsource" not in result or "offsource" not in reference:
        return False
    return (
        result["binary_auroc_val"] > reference["binary_auroc_val"]
        and result["offsource"]["offsource_auroc"] > reference["offsource"]["offsource_auroc"]
    )


def judge(result: dict, reference: dict, presets: list[str], own_weights: bool = False) -> None:
    """Agreement with the reference on every set, and the criteria on the judged ones; a
    candidate with weights of its own (quantization-aware) also answers to the shipping rule."""
    result["agreement"] = {
        name: compare(reference["decisions"][name], result["decisions"][name], presets) for name in result["decisions"]
    }
    result["auroc_delta"] = {
        "overall": abs(result["binary_auroc_test"] - reference["binary_auroc_test"]),
        "fracatlas": abs(result["binary_auroc_test_fracatlas"] - reference["binary_auroc_test_fracatlas"]),
    }
    judged = [result["agreement"][name] for name in JUDGED]
    result["passes"] = {
        "auroc_delta": max(result["auroc_delta"].values()) <= CRITERIA["auroc_delta"],
        "verdict_agreement": min(v for a in judged for v in a["verdict_agreement"].values())
        >= CRITERIA["verdict_agreement"],
        "ece": result["ece_test"] <= CRITERIA["ece"],
        "flag_agreement": min(
            [v for a in judged for v in a["uncertain_agreement"].values()] + [a["not_xray_agreement"] for a in judged]
        )
        >= CRITERIA["flag_agreement"],
    }
    if own_weights:
        result["passes"]["model_shipping_rule"] = beats_reference(result, reference)
    result["passed"] = all(result["passes"].values())


def verdict_pair(block: dict) -> str:
    return " / ".join(f"{v:.1%}" for v in block["verdict_agreement"].values())


def flag_floor(block: dict) -> str:
    return f"{min(list(block['uncertain_agreement'].values()) + [block['not_xray_agreement']]):.1%}"


def confident_changes(block: dict) -> str:
    changes = block.get("confident_change")
    return f"{max(changes.values()):.1%}" if changes else "-"


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
        if a:  # the reference row has nothing to pass
            failed = ", ".join(k for k, v in r["passes"].items() if not v)
            verdict = "yes" if r["passed"] else "no: " + failed
        lines.append(
            f"| {name} | {r['timing_ms_per_image']['batch_1']:.1f} | {r['timing_ms_per_image']['batch_8']:.1f} | "
            f"{r['binary_auroc_test']:.4f} | {r['binary_auroc_test_fracatlas']:.4f} | {r['ece_test']:.3f} | "
            f"{r['temperature']:.3f}{' (own)' if r['own_temperature'] else ''} | "
            f"{verdict_pair(a['test']) if a else '-'} | {verdict_pair(a['knee']) if a else '-'} | "
            f"{flag_floor(a['test']) if a else '-'} | {flag_floor(a['knee']) if a else '-'} | "
            f"{verdict if a else 'reference'} |"
        )
    return "\n".join(lines + checks_markdown(results, n)) + "\n"


def checks_markdown(results: dict, n: dict) -> list[str]:
    """The other unseen-source checks (reported, not judged) and each engine's AUROCs."""
    if not all("offsource" in r for r in results.values()):
        return []
    lines = [
        "",
        f"Reported beside the criteria, not judged: agreement on wrist_check ({n.get('wrist', 0)} films) and "
        f"hbfmid_check ({n.get('hbfmid', 0)} films), the validation AUROC and the off-source AUROC "
        "(the worst of hbfmid_check's fractures against the knees and the wrists). A confident change: "
        "the candidate gives a confident answer that float32 did not give (another verdict, or float32 "
        "asked for review), under the preset where that happens most.",
        "",
        "| engine | validation AUROC | off-source AUROC | same verdict, wrists | flags agree, wrists | "
        "same verdict, hbfmid | flags agree, hbfmid | confident changes, test | confident changes, knee |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        a = r.get("agreement")
        cells = [verdict_pair(a[s]) + " | " + flag_floor(a[s]) if a and s in a else "- | -" for s in REPORTED]
        cells += [confident_changes(a[s]) if a and s in a else "-" for s in JUDGED]
        lines.append(
            f"| {name} | {r['binary_auroc_val']:.4f} | {r['offsource']['offsource_auroc']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


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
        "machine": describe_machine(),  # where the timings were taken
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


def write_bundle(bundle_dir: Path, candidate: Candidate, name: str, results: dict, table: str) -> None:
    """Ship the candidate as the bundle's int8 engine, with what it is and how it was made."""
    target = bundle_dir / INT8_FILE
    shutil.copyfile(candidate.path, target)
    engine = {
        "file": INT8_FILE,
        "sha256": sha256_of(target),
        "candidate": name,
        "format": f"LiteRT flatbuffer, {name}",
        "engine": "ai-edge-litert (XNNPACK); --precision int8 in the CLI and Ray",
        "temperature": results[name]["temperature"],
        # Convolutions kept in float beyond the converter's default (which keeps weight tensors
        # under 1,024 elements in float: the first convolution, the fracture map, the dense heads).
        "denylist": list(candidate.denylist),
        **({"made_by": candidate.made_by} if candidate.made_by else {}),
    }
    record_check(bundle_dir, "runtime_int8", engine, results, stale="int8_check")
    kept = ", ".join(f"`{layer}`" for layer in candidate.denylist) or "none"
    write_card_section(
        bundle_dir,
        f"`{INT8_FILE}` ({name}) passed and is the default engine of every serving path "
        "(app, CLI, PACS, Ray) on this bundle; `BONE_XRAY_PRECISION=float32` or `--precision float32` chooses "
        f"the float32 one. Convolutions kept in float (the denylist): {kept}; the converter also keeps "
        "weight tensors under 1,024 elements in float (the first convolution, the fracture map's 1 x 1 head, "
        "the dense heads).\n\n" + table,
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


@dataclass(frozen=True)
class Candidate:
    path: Path
    denylist: tuple[str, ...] = ()  # convolutions kept in float
    made_by: dict | None = None  # how its weights were made, when not the bundle's own


def in_float(layers) -> str:
    """A denylist in a candidate's name: the layer itself when one, else how many."""
    return f"{layers[0]} in float" if len(layers) == 1 else f"{len(layers)} convolutions in float"


def candidates(args: argparse.Namespace, model_path: Path, sets: dict, tmp: Path) -> dict[str, Candidate]:
    """Every engine to judge, converted into tmp: the converter's two int8 modes, dynamic range
    with --float-layers kept in float, and the quantization-aware weights when given."""
    found = {
        "int8 dynamic range": Candidate(convert(model_path, tmp / "dynamic.tflite", int8=True)),
        "int8 full integer": Candidate(
            convert(model_path, tmp / "full.tflite", int8=True, representative=sets["representative"]["images"])
        ),
    }
    if args.float_layers:
        path = convert_selective(model_path, tmp / "selective.tflite", args.float_layers)
        found[f"int8 dynamic range, {in_float(args.float_layers)}"] = Candidate(path, tuple(args.float_layers))
    for index, keras_path in enumerate(args.quantization_aware or ()):
        made_by = read_export(keras_path)
        layers = tuple(made_by["float_layers"])
        name = f"{QUANTIZATION_AWARE}{', ' + in_float(layers) if layers else ''}"
        if name in found:
            raise SystemExit(f"{keras_path}: another quantization-aware candidate keeps the same layers in float")
        found[name] = Candidate(convert_selective(keras_path, tmp / f"qat_{index}.tflite", layers), layers, made_by)
    return found


def main(argv=None) -> dict:
    parser = set_parser(__doc__.splitlines()[0], representative=100)
    parser.add_argument("--write", action="store_true", help="ship the fastest passing candidate in the bundle")
    parser.add_argument("--out", type=Path, default=Path("artifacts/equivalence.json"))
    parser.add_argument(
        "--float-layers", nargs="*", default=list(DEFAULT_FLOAT_LAYERS), help="a dynamic-range candidate's denylist"
    )
    parser.add_argument(
        "--quantization-aware",
        type=Path,
        nargs="*",
        help="also judge these .keras files (training.quantization.distill --export) as int8 dynamic range",
    )
    args = parser.parse_args(argv)
    bundle, model_path, litert_path = bundle_to_convert(args)
    sets = load_sets(args)
    results = {"float32 (shipped)": evaluate_engine(LiteRTEngine(litert_path), sets, bundle)}
    reference = results["float32 (shipped)"]
    with tempfile.TemporaryDirectory() as tmp:
        found = candidates(args, model_path, sets, Path(tmp))
        for name, candidate in found.items():
            own_weights = candidate.made_by is not None
            results[name] = evaluate_engine(LiteRTEngine(candidate.path), sets, bundle, reference, own_weights)
            print(name, json.dumps(summary(results[name]), default=float))
        table = markdown(results, {name: len(sets[name]["images"]) for name in (*JUDGED, *REPORTED) if name in sets})
        print(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({k: summary(v) for k, v in results.items()}, indent=1, default=float))
        passing = [n for n in found if results[n]["passed"]]
        if args.write and passing:
            best = min(passing, key=lambda n: results[n]["timing_ms_per_image"]["batch_8"])
            write_bundle(args.bundle_dir, found[best], best, results, table)
            print(f"wrote {best} to {args.bundle_dir / INT8_FILE}")
        elif args.write:
            write_float32_only(args.bundle_dir, results, table)
            print(f"no candidate passed: {args.bundle_dir} serves float32 only")
    return results


if __name__ == "__main__":
    main()
