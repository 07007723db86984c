"""Command line: classify radiographs without the web app.

    python -m utils.cli predict PATH [PATH ...] [--format jsonl|csv] [--output FILE]
                                [--preset balanced|fracture_sensitive] [--batch-size N]

Folders are searched recursively. One record per input: path, label, probabilities,
uncertain, warnings, error. Exit status: 0 every input predicted, 1 some failed (the rest are
still predicted), 2 usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from utils.inference import CLASSES

MAX_FILE_BYTES = 256 * 1024 * 1024
PROGRESS_MIN_FILES = 4
CSV_COLUMNS = ["path", "label"] + [f"p_{c}" for c in CLASSES] + ["uncertain", "warnings", "error"]


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, folders recursed in sorted order (hidden entries skipped)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
        else:
            found.append(path)
    return found


def read_input(path: Path) -> bytes:
    from utils.decode import InputError

    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"The file is larger than {MAX_FILE_BYTES // 2**20} MB.")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError("No such file.") from None
    except IsADirectoryError:
        raise InputError("This is a folder, not a file.") from None
    except PermissionError:
        raise InputError("Permission denied: the file cannot be read.") from None
    except OSError as exc:
        raise InputError(f"The file cannot be read ({exc.strerror or exc}).") from None


def predict_records(classifier, paths: list[Path], preset: str, batch_size: int,
                    progress=None) -> Iterator[dict]:
    """Yield one record per path, reading and classifying batch_size files at a time."""
    from utils.classifier import Prediction
    from utils.decode import InputError

    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        readable, records = [], {}
        for path in chunk:
            try:
                readable.append((str(path), read_input(path)))
            except InputError as exc:
                records[str(path)] = Prediction(name=str(path), error=str(exc)).as_record()
        for prediction in classifier.predict_many(readable, preset=preset, batch_size=batch_size):
            records[prediction.name] = prediction.as_record()
        for path in chunk:
            yield records[str(path)]
        if progress is not None:
            progress.update(len(chunk))


def write_records(records: Iterator[dict], fmt: str, handle) -> list[dict]:
    written = []
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
    for record in records:
        if writer is None:
            handle.write(json.dumps(record) + "\n")
        else:
            probs = record["probabilities"] or {}
            writer.writerow({"path": record["path"], "label": record["label"] or "",
                             **{f"p_{c}": f"{probs[c]:.6f}" if c in probs else "" for c in CLASSES},
                             "uncertain": str(record["uncertain"]).lower(),
                             "warnings": " | ".join(record["warnings"]), "error": record["error"] or ""})
        handle.flush()
        written.append(record)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.cli", description="Bone X-ray Classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify images (files or folders)")
    predict.add_argument("paths", nargs="+", metavar="PATH")
    predict.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    predict.add_argument("--output", type=Path, help="write here instead of stdout")
    predict.add_argument("--preset", choices=("balanced", "fracture_sensitive"), default="balanced")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--model-dir", type=Path, help="model bundle folder (default: model/)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on usage errors
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    paths = expand_paths(args.paths)
    if not paths:
        print("error: the folders given contain no files", file=sys.stderr)
        return 2
    from utils.bundle import ModelBundleError, load_bundle
    from utils.classifier import Classifier

    try:
        classifier = Classifier(load_bundle(args.model_dir))
    except ModelBundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from tqdm import tqdm

    progress = tqdm(total=len(paths), unit="image", file=sys.stderr,
                    disable=len(paths) < PROGRESS_MIN_FILES)
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        records = write_records(predict_records(classifier, paths, args.preset, args.batch_size, progress),
                                args.format, handle)
    finally:
        progress.close()
        if args.output:
            handle.close()
    failed = sum(1 for r in records if r["error"])
    if failed:
        print(f"{failed} of {len(records)} inputs could not be classified", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
