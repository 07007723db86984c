"""How often does the float32 engine change its own answer when a film changes in a way no reader
would see? The yardstick for the int8 engine's agreement.

Usage: python -m training.studies.float32_repeatability [--quality 95] [--out artifacts/float32_repeatability.json]

Each film of the test split and the knee check (measured only) goes through the shipped float32
engine as it is, and again after its model input is stored as a JPEG of --quality and read back
(what a PACS that keeps lossy copies does; at 95 the change is below one grey level on
average). The agreement is computed exactly as the equivalence check computes it for the int8
engine (same verdict, same uncertain and not-an-X-ray flags, confident changes). Nothing is fitted.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from training.release.equivalence import (
    JUDGED,
    bundle_to_convert,
    compare,
    decisions,
    engine_outputs,
    load_sets,
    set_parser,
)
from training.studies.output import write_study
from utils.core.engines import LiteRTEngine
from utils.core.inference import calibrated_probabilities


def jpeg_round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    """(N, S, S) uint8 images, each stored as a JPEG of `quality` and decoded again."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) if ok else None
        if decoded is None:
            raise RuntimeError("JPEG round trip failed")
        out[i] = decoded
    return out


def answers(engine, images: np.ndarray, bundle) -> dict:
    logits, features = engine_outputs(engine, images)
    probs = calibrated_probabilities(logits, bundle.temperature)
    return decisions(probs, bundle.guard.distance(features), bundle.metadata, bundle.guard.threshold)


def markdown(figures: dict) -> str:
    lines = [
        f"float32 against itself, each film as stored and as a JPEG of quality {figures['quality']} "
        "(judged like the int8 engine):",
        "",
        "| set | mean input change (of 255) | same verdict (balanced / sensitive) | same uncertain flag "
        "(balanced / sensitive) | same not-an-X-ray flag | confident changes (worst preset) |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in figures["sets"].items():
        a = f["agreement"]
        lines.append(
            f"| {name} | {f['mean_input_change']:.2f} | "
            + " / ".join(f"{v:.1%}" for v in a["verdict_agreement"].values())
            + " | "
            + " / ".join(f"{v:.1%}" for v in a["uncertain_agreement"].values())
            + f" | {a['not_xray_agreement']:.1%} | {max(a['confident_change'].values()):.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = set_parser(__doc__.splitlines()[0], representative=0)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--out", type=Path, default=Path("artifacts/float32_repeatability.json"))
    args = parser.parse_args(argv)
    bundle, _, litert_path = bundle_to_convert(args)
    sets, engine = load_sets(args), LiteRTEngine(litert_path)
    presets = list(bundle.metadata["presets"])
    figures: dict = {"quality": args.quality, "sets": {}}
    for name in JUDGED:
        images = sets[name]["images"]
        stored = jpeg_round_trip(images, args.quality)
        figures["sets"][name] = {
            "n": len(images),
            "mean_input_change": float(np.abs(stored.astype(np.int16) - images).mean()),
            "agreement": compare(answers(engine, images, bundle), answers(engine, stored, bundle), presets),
        }
    write_study(figures, args.out, markdown(figures))
    return figures


if __name__ == "__main__":
    main()
