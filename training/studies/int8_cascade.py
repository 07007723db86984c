"""Would an int8 engine that hands its borderline films to float32 pass the equivalence check?

Usage: python -m training.studies.int8_cascade [--bundle-dir model] [--quantile 1.0]

Int8 flips only films near a threshold. This study simulates a cascade from the two engines'
outputs: the int8 dynamic-range engine (converted from the bundle's .keras file) answers a film
unless its decision could change within int8's error, and then float32 answers it. The error
margins are fitted on the validation split only: the --quantile of |int8 - float32| for
P(any fracture), P(beyond repair | fracture) and the guard's distance. A film is handed on when
any preset's (label, uncertain) differs at a corner of the box the margins draw round its int8
probabilities (the two-stage rule's thresholds are axis-aligned in those two probabilities, so
the corners decide), or when its guard distance is within the margin of the threshold.

It reports, on the test split and the knee check (nothing fitted on them), the same agreement
figures as training.release.equivalence for int8 alone and for the cascade, the share of films
handed on, and the cascade's expected cost per film (int8 time + share x float32 time, the
times measured here). Writes artifacts/int8_cascade.json and .md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.litert import convert
from training.release.equivalence import (
    bundle_to_convert,
    compare,
    decisions,
    engine_outputs,
    load_sets,
    median_ms,
    set_parser,
)
from training.studies.output import write_study
from utils.core.engines import LiteRTEngine
from utils.core.inference import calibrated_probabilities, decide

SETS = ("val", "test", "knee")


def any_and_severity(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(any fracture), P(beyond repair | fracture)) of (N, 3) probabilities."""
    p_any = probs[:, 1] + probs[:, 2]
    return p_any, probs[:, 2] / np.maximum(p_any, 1e-12)


def from_any_and_severity(p_any: float, p_sev: float) -> np.ndarray:
    p_any, p_sev = float(np.clip(p_any, 0, 1)), float(np.clip(p_sev, 0, 1))
    return np.array([1 - p_any, p_any * (1 - p_sev), p_any * p_sev])


def borderline(probs: np.ndarray, distance: np.ndarray, margins: dict, bundle: Any) -> np.ndarray:
    """Films whose decision could change within the margins: (N,) bool."""
    p_any, p_sev = any_and_severity(probs)
    presets = list(bundle.metadata["presets"].values())
    out = np.abs(distance - bundle.guard.threshold) <= margins["guard_distance"]
    for i in np.flatnonzero(~out):
        centre = [decide(probs[i], preset) for preset in presets]
        for da in (-margins["p_any"], margins["p_any"]):
            for ds in (-margins["p_severity"], margins["p_severity"]):
                corner = from_any_and_severity(p_any[i] + da, p_sev[i] + ds)
                if [decide(corner, preset) for preset in presets] != centre:
                    out[i] = True
                    break
            if out[i]:
                break
    return out


def fitted_margins(fast: dict, exact: dict, quantile: float) -> dict[str, float]:
    """Int8's error on the validation split: the quantile of each |int8 - float32|."""
    (fa, fs), (ea, es) = any_and_severity(fast["probs"]), any_and_severity(exact["probs"])
    return {
        "p_any": float(np.quantile(np.abs(fa - ea), quantile)),
        "p_severity": float(np.quantile(np.abs(fs - es), quantile)),
        "guard_distance": float(np.quantile(np.abs(fast["distance"] - exact["distance"]), quantile)),
    }


def engine_results(engine: Any, sets: dict, bundle: Any) -> dict[str, dict]:
    results = {}
    for name in SETS:
        logits, features = engine_outputs(engine, sets[name]["images"])
        results[name] = {
            "probs": calibrated_probabilities(logits, bundle.temperature),
            "distance": bundle.guard.distance(features),
        }
    return results


def cascade_figures(fast: dict, exact: dict, margins: dict, bundle: Any, times: dict) -> dict:
    presets, metadata, threshold = list(bundle.metadata["presets"]), bundle.metadata, bundle.guard.threshold
    figures: dict[str, Any] = {"margins": margins, "ms_per_image": times}
    for name in ("test", "knee"):
        handed_on = borderline(fast[name]["probs"], fast[name]["distance"], margins, bundle)
        mixed = {
            k: np.where(handed_on[:, None] if k == "probs" else handed_on, exact[name][k], fast[name][k])
            for k in ("probs", "distance")
        }
        reference = decisions(exact[name]["probs"], exact[name]["distance"], metadata, threshold)
        figures[name] = {
            "handed_on": float(handed_on.mean()),
            "int8_alone": compare(
                reference, decisions(fast[name]["probs"], fast[name]["distance"], metadata, threshold), presets
            ),
            "cascade": compare(reference, decisions(mixed["probs"], mixed["distance"], metadata, threshold), presets),
        }
    share = max(figures[name]["handed_on"] for name in ("test", "knee"))
    figures["cascade_ms_per_image"] = times["int8"] + share * times["float32"]
    return figures


def markdown(figures: dict) -> str:
    m, t = figures["margins"], figures["ms_per_image"]
    lines = [
        f"Margins (validation, quantile {figures['quantile']}): P(any fracture) {m['p_any']:.4f}, "
        f"P(beyond | fracture) {m['p_severity']:.4f}, guard distance {m['guard_distance']:.4f}. "
        f"Batch 1: float32 {t['float32']:.0f} ms, int8 {t['int8']:.0f} ms, cascade about "
        f"{figures['cascade_ms_per_image']:.0f} ms per film (int8 + the share handed on x float32).",
        "",
        "| set | engine | handed to float32 | same verdict (balanced / sensitive) | same uncertain flag "
        "| same guard flag |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("test", "knee"):
        for engine in ("int8_alone", "cascade"):
            a = figures[name][engine]
            verdicts = " / ".join(f"{v:.1%}" for v in a["verdict_agreement"].values())
            flags = " / ".join(f"{v:.1%}" for v in a["uncertain_agreement"].values())
            share = f"{figures[name]['handed_on']:.1%}" if engine == "cascade" else "-"
            lines.append(
                f"| {name} | {engine.replace('_', ' ')} | {share} | {verdicts} | {flags} | "
                f"{a['not_xray_agreement']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = set_parser(__doc__.splitlines()[0], representative=0)
    parser.add_argument("--quantile", type=float, default=1.0, help="of int8's validation error (1.0: its largest)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/int8_cascade.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bundle, model_path, litert_path = bundle_to_convert(args)
    sets = load_sets(args)
    with tempfile.TemporaryDirectory() as tmp:
        engines = {
            "float32": LiteRTEngine(litert_path),
            "int8": LiteRTEngine(convert(model_path, Path(tmp) / "dynamic.tflite", int8=True)),
        }
        times = {name: median_ms(engine, sets["test"]["images"], 1) for name, engine in engines.items()}
        started = time.perf_counter()
        exact, fast = (engine_results(engines[name], sets, bundle) for name in ("float32", "int8"))
    margins = fitted_margins(fast["val"], exact["val"], args.quantile)
    figures = {"quantile": args.quantile, **cascade_figures(fast, exact, margins, bundle, times)}
    figures["outputs_seconds"] = time.perf_counter() - started
    write_study(figures, args.out, markdown(figures))
    return figures


if __name__ == "__main__":
    main()
