"""Does decoding at reduced size change what the model says? The decoding equivalence check.

Usage: python -m training.release.decode_equivalence [--candidate shipped|reduced] [--precision int8]
                                             [--bundle-dir model] [--out FILE]

Reference: the path before this change: every film decoded at full size and the contrast
stretch computed in float64. Candidates: "shipped" (`utils.core.preprocess.decode_for_model`:
full size, the stretch in float32) and "reduced" (JPEGs decoded at the smallest DCT scale that
keeps the 1,024-px working side, then the same). Both sides go through the same classifier
(temperature, presets, guard).

Image sets: the test split, ../shared/data/knee_oai/ and ../shared/data/hbfmid_check/ (measured
only, nothing fitted), each as stored and re-encoded as a 5-megapixel JPEG (longer side 2,500
px, quality 92), the case reduced decoding serves. Criteria, per set and form:
- binary AUROC of P(any fracture) within 0.005 (the test split's labels; hbfmid_check's
  fractures against the knees);
- the same verdict under each preset for >= 99 % of images;
- the same not-an-X-ray flag for >= 99 %.
It also reports how far the border crop and the percentile range move (the steps that must
still see enough pixels).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from training.data import DEFAULT_SPLIT_FILE, default_data_dir, read_split
from training.offsource import check_rows
from utils.core import preprocess as preprocessing
from utils.core.bundle import DEFAULT_BUNDLE_DIR, load_bundle
from utils.core.classifier import Classifier, Prediction, Preparation, model_input_of, prepare_input
from utils.core.decode import decode_image_bytes
from utils.core.pixels import DecodedImage, InputError

CRITERIA = {"auroc_delta": 0.005, "verdict_agreement": 0.99, "flag_agreement": 0.99}
LARGE_SIDE = 2500
LARGE_QUALITY = 92


def float64_stretch(pixels: np.ndarray, percentiles=preprocessing.CONTRAST_PERCENTILES) -> np.ndarray:
    """The contrast stretch as it was before (float64 arithmetic): the reference."""
    low, high = preprocessing.percentile_range(pixels, percentiles)
    if high - low < 1e-6:
        return np.zeros_like(pixels, dtype=np.float32)
    return np.clip((pixels - low) / (high - low), 0.0, 1.0).astype(np.float32)


# The whole serving path as it was before (full-size decoding, float64 stretch): what the
# candidates are judged against, and what the benchmarks time beside the shipped path.
REFERENCE = Preparation(decode=decode_image_bytes, contrast=float64_stretch)


def as_large_jpeg(data: bytes) -> bytes:
    """The film re-encoded at 5 megapixels (longer side LARGE_SIDE), as a modern detector writes.
    Read through the app's decoder, so that a truncated original is re-encoded as far as it goes."""
    try:
        pixels = decode_image_bytes(data).pixels
    except InputError:
        return data  # unreadable: both paths give the same error
    scale = LARGE_SIDE / max(pixels.shape)
    size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
    large = np.clip(cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    buffer = io.BytesIO()
    Image.fromarray(np.round(large * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=LARGE_QUALITY)
    return buffer.getvalue()


def reduced_decode(data: bytes) -> DecodedImage:
    return decode_image_bytes(data, working_side=preprocessing.MAX_WORKING_SIDE)


CANDIDATES: dict[str, Callable[[bytes], DecodedImage]] = {
    "shipped": preprocessing.decode_for_model,
    "reduced": reduced_decode,
}


def prepare_pair(name: str, data: bytes, size: int, candidate: str) -> tuple[Prediction, Prediction]:
    reference = prepare_input(name, data, size, how=REFERENCE)
    return reference, prepare_input(name, data, size, how=Preparation(decode=CANDIDATES[candidate]))


def stability(data: bytes, candidate: str) -> dict[str, float]:
    """How far the border crop (as shares of the image) and the percentile range move."""

    def measure(decoded: DecodedImage) -> np.ndarray:
        pixels = preprocessing.limit_size(decoded.pixels)
        rows, cols = preprocessing.uniform_border(pixels)
        h, w = pixels.shape
        low, high = preprocessing.percentile_range(pixels[rows, cols])
        return np.array([rows.start / h, rows.stop / h, cols.start / w, cols.stop / w, low, high])

    full = measure(decode_image_bytes(data))
    delta = np.abs(full - measure(CANDIDATES[candidate](data)))
    return {"crop_share": float(delta[:4].max()), "percentile": float(delta[4:].max())}


def classify(classifier: Classifier, predictions: list[Prediction], batch: int = 16) -> None:
    ready = [p for p in predictions if p.error is None]
    for i in range(0, len(ready), batch):
        classifier.complete(ready[i : i + batch])


def verdict_key(verdict) -> str:
    """The label and whether it is marked uncertain, as one comparable string."""
    return str((verdict.label, verdict.uncertain))


def decisions(classifier: Classifier, predictions: list[Prediction]) -> dict:
    presets = classifier.bundle.metadata["presets"]
    return {
        "p_fracture": np.array([1.0 - (p.probabilities or {}).get("healthy", np.nan) for p in predictions]),
        "not_xray": np.array([p.not_xray is not None for p in predictions]),
        # The verdict a user sees: the label and whether it is marked uncertain.
        **{name: np.array([verdict_key(p.decide(preset)) for p in predictions]) for name, preset in presets.items()},
    }


def measure_set(
    classifier: Classifier, items: list[tuple[str, bytes]], form: Callable[[bytes], bytes], candidate: str
) -> dict:
    """Reference and candidate decisions for one set in one form, plus the input differences."""
    size = classifier.bundle.input_size
    references, candidates, moves, errors = [], [], [], []
    for name, data in items:
        data = form(data)
        reference, other = prepare_pair(name, data, size, candidate)
        if reference.error is not None or other.error is not None:
            errors.append(name)  # counted; both paths raise the same InputError for a bad file
            continue
        references.append(reference)
        candidates.append(other)
        moves.append(stability(data, candidate))
    same = [
        np.array_equal(np.asarray(r.model_input), np.asarray(c.model_input)) for r, c in zip(references, candidates)
    ]
    classify(classifier, references)
    # Identical inputs give identical outputs: only the changed ones run the model again.
    classify(classifier, [c for c, s in zip(candidates, same) if not s])
    for index, s in enumerate(same):
        if s:
            candidates[index] = references[index]
    differences = [
        float(np.abs(model_input_of(r).astype(int) - model_input_of(c)).mean()) for r, c in zip(references, candidates)
    ]
    return {
        "reference": decisions(classifier, references),
        "candidate": decisions(classifier, candidates),
        "unreadable": len(errors),
        "identical_inputs": float(np.mean(same)),
        "mean_abs_input_difference": float(np.mean(differences)),
        "max_crop_share_move": max(m["crop_share"] for m in moves),
        "max_percentile_move": max(m["percentile"] for m in moves),
    }


def agreement(result: dict, presets: list[str]) -> dict:
    ref, cand = result["reference"], result["candidate"]
    return {
        "verdict_agreement": {name: float(np.mean(ref[name] == cand[name])) for name in presets},
        "flag_agreement": float(np.mean(ref["not_xray"] == cand["not_xray"])),
    }


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[positive, negative]))


FORMS: dict[str, Callable[[bytes], bytes]] = {"as stored": lambda data: data, "5-megapixel JPEG": as_large_jpeg}


def image_sets(data_dir: Path, split_file: Path) -> dict[str, tuple[list[tuple[str, bytes]], list[str]]]:
    """{set: ([(name, bytes)], labels)} for the test split and the two unseen-source checks."""
    sets = {}
    test = [r for r in read_split(split_file) if r["split"] == "test"]
    sets["test"] = ([(r["path"], (data_dir / r["path"]).read_bytes()) for r in test], [r["label"] for r in test])
    for folder in ("knee_oai", "hbfmid_check"):
        rows = check_rows(data_dir, folder)
        sets[folder] = ([(r["path"], Path(r["file"]).read_bytes()) for r in rows], [r["label"] for r in rows])
    return sets


def aurocs(results: dict, labels: dict, side: str) -> dict[str, float]:
    test = results["test"][side]["p_fracture"]
    fractured = np.array(labels["test"]) != "healthy"
    hbfmid = results["hbfmid_check"][side]["p_fracture"][np.array(labels["hbfmid_check"]) != "healthy"]
    return {
        "test": auroc(test[fractured], test[~fractured]),
        "hbfmid_check_vs_knee_oai": auroc(hbfmid, results["knee_oai"][side]["p_fracture"]),
    }


def summarise_form(results: dict, labels: dict, presets: list[str]) -> dict:
    reference, candidate = aurocs(results, labels, "reference"), aurocs(results, labels, "candidate")
    summary: dict = {
        "auroc": {k: {"reference": reference[k], "candidate": candidate[k]} for k in reference},
        "auroc_delta": {k: abs(reference[k] - candidate[k]) for k in reference},
        "sets": {},
    }
    for name, result in results.items():
        summary["sets"][name] = {
            "images": len(result["reference"]["p_fracture"]),
            **agreement(result, presets),
            **{k: result[k] for k in result if k not in ("reference", "candidate")},
        }
    sets = summary["sets"].values()
    summary["passes"] = {
        "auroc_delta": max(summary["auroc_delta"].values()) <= CRITERIA["auroc_delta"],
        "verdict_agreement": min(v for s in sets for v in s["verdict_agreement"].values())
        >= CRITERIA["verdict_agreement"],
        "flag_agreement": min(s["flag_agreement"] for s in sets) >= CRITERIA["flag_agreement"],
    }
    summary["passed"] = all(summary["passes"].values())
    return summary


def markdown(summary: dict) -> str:
    lines = [
        "| form | set | images | identical inputs | mean input change (of 255) | same verdict (per preset) "
        "| same flag | crop move (share) | percentile move |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for form, block in summary["forms"].items():
        for name, s in block["sets"].items():
            verdicts = " / ".join(f"{v:.1%}" for v in s["verdict_agreement"].values())
            lines.append(
                f"| {form} | {name} | {s['images']} | {s['identical_inputs']:.1%} | "
                f"{s['mean_abs_input_difference']:.3f} | {verdicts} | {s['flag_agreement']:.1%} | "
                f"{s['max_crop_share_move']:.4f} | {s['max_percentile_move']:.4f} |"
            )
    lines += ["", "| form | AUROC | reference | candidate | difference |", "|---|---|---|---|---|"]
    for form, block in summary["forms"].items():
        for name, pair in block["auroc"].items():
            lines.append(
                f"| {form} | {name} | {pair['reference']:.4f} | {pair['candidate']:.4f} | "
                f"{block['auroc_delta'][name]:.4f} |"
            )
    lines.append("\n" + outcome_sentence(summary))
    return "\n".join(lines)


CRITERION_WORDS = {
    "auroc_delta": f"AUROC within {CRITERIA['auroc_delta']}",
    "verdict_agreement": f"the same verdict under each preset for >= {CRITERIA['verdict_agreement']:.0%}",
    "flag_agreement": f"the same not-an-X-ray flag for >= {CRITERIA['flag_agreement']:.0%}",
}


def outcome_sentence(summary: dict) -> str:
    """Passed, or which criteria failed on which form, in words."""
    failed = [
        f"{CRITERION_WORDS[criterion]} ({form})"
        for form, block in summary["forms"].items()
        for criterion, ok in block.get("passes", {}).items()
        if not ok
    ]
    if summary.get("passed", not failed):
        return "Outcome: passed (" + "; ".join(CRITERION_WORDS.values()) + ")."
    return "Outcome: failed on " + "; ".join(failed) + "." if failed else "Outcome: failed."


CARD_MARKER = "## Decoding: the equivalence check"
CARD_NEXT = "## Faster engine: the equivalence check"


def card_section(summary: dict) -> str:
    candidate = summary["candidate"]
    verdict = "passed" if summary["passed"] else "failed, so serving does not use it"
    return (
        f"{CARD_MARKER}\n\nDecoding candidate `{candidate}` against the decoding before it, "
        f"{summary['precision']} engine, judged like the int8 engine on the test split, `knee_oai/` and "
        "`hbfmid_check/`, as stored and re-encoded as 5-megapixel JPEGs (the image columns compare the model "
        f"inputs): {verdict}. `python -m training.release.decode_equivalence --candidate {candidate} "
        f"--precision {summary['precision']}`.\n\n{markdown(summary)}\n\n"
    )


def write_card_section(card: Path, summary: dict) -> None:
    """Put the section in the model card, before the int8 engine's (which that check rewrites to the end)."""
    text = card.read_text()
    if CARD_MARKER in text:
        start = text.index(CARD_MARKER)
        end = text.find("\n## ", start + len(CARD_MARKER))
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    at = text.find(CARD_NEXT)
    at = at if at >= 0 else len(text)
    card.write_text(text[:at] + card_section(summary) + text[at:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-dir", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--precision", default="int8", choices=("float32", "int8"))
    parser.add_argument("--candidate", default="shipped", choices=tuple(CANDIDATES))
    parser.add_argument("--out", type=Path, default=DEFAULT_BUNDLE_DIR / "eval" / "decode_equivalence.json")
    parser.add_argument("--card-from", type=Path, help="only write this stored result's table into the model card")
    args = parser.parse_args(argv)
    if args.card_from:
        stored = json.loads(args.card_from.read_text())
        write_card_section(args.bundle_dir / "MODEL_CARD.md", stored)
        return stored
    classifier = Classifier(load_bundle(args.bundle_dir, load_keras=False), precision=args.precision)
    presets = list(classifier.bundle.metadata["presets"])
    sets = image_sets(args.data_dir, args.split)
    labels = {name: set_labels for name, (_, set_labels) in sets.items()}
    summary: dict = {"candidate": args.candidate, "precision": args.precision, "criteria": CRITERIA, "forms": {}}
    for form, convert in FORMS.items():
        results = {name: measure_set(classifier, items, convert, args.candidate) for name, (items, _) in sets.items()}
        summary["forms"][form] = summarise_form(results, labels, presets)
        print(f"{form}: done", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))  # each form as it is done
    summary["passed"] = all(block["passed"] for block in summary["forms"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
