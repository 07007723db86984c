"""Command line: classify radiographs without the web app.

    python -m utils.cli predict PATH|URL [PATH|URL ...] [--format jsonl|csv] [--output FILE]
                                [--preset balanced|fracture_sensitive] [--batch-size N]
                                [--heatmaps DIR] [--report report.pdf] [--reference TEXT]

    python -m utils.cli pacs --server URL (--study UID | --patient-id ID | --accession N | --since YYYYMMDD)
                             [--store] [--format jsonl|csv] [--output FILE] [--preset ...] [--batch-size N]

Folders are searched recursively; http(s) URLs are fetched under utils.url_input's rules
(the record's path is the URL). One record per input: path, label, probabilities,
uncertain, not_xray (the not-an-X-ray guard fired; uncertain is then true and a warning says
why), warnings, error; `pacs` records add the study, series and SOP instance UIDs, and
--store writes a DICOM SR and Secondary Captures into each study (see utils.pacs). Exit status: 0 every input predicted, 1 some failed or were
incomplete (a truncated file: its record is uncertain, with the reason in its warnings; the rest
are still predicted), 2 usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from utils.report import CSV_COLUMNS, csv_row

MAX_FILE_BYTES = 256 * 1024 * 1024
PROGRESS_MIN_FILES = 4
DECODE_WORKERS = 2  # threads reading and decoding the next batch while the model runs
PACS_COLUMNS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")


def expand_paths(paths: list[str]) -> list[Path | str]:
    """Files as given, folders recursed in sorted order (hidden entries skipped); http(s) URLs
    stay strings (a Path would fold their '//')."""
    from utils.url_input import is_url

    found: list[Path | str] = []
    for raw in paths:
        if is_url(raw):
            found.append(raw)
            continue
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
        else:
            found.append(path)
    return found


def read_input(path: Path | str) -> bytes:
    """The bytes of a file, or of an image URL fetched under utils.url_input's rules."""
    from utils.decode import InputError
    from utils.url_input import UrlRefused, fetch_image_bytes, is_url

    if isinstance(path, str) and is_url(path):
        try:
            return fetch_image_bytes(path)
        except UrlRefused as exc:
            raise InputError(str(exc)) from None
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


def prepare_path(path: Path | str, input_size: int):
    """Read and decode one input into a Prediction (model input, or its error)."""
    from utils.classifier import Prediction, prepare_input
    from utils.decode import InputError

    try:
        return prepare_input(str(path), read_input(path), input_size)
    except InputError as exc:
        return Prediction(name=str(path), error=str(exc))


def predict_paths(classifier, paths: list[Path | str], preset: str, batch_size: int,
                  progress=None, decode_workers: int = DECODE_WORKERS) -> Iterator:
    """Yield one Prediction per path, in order. The next batch is read and decoded in a thread
    pool while the model runs on this one, so decoding and inference overlap (both release
    the GIL in their native code); at most two batches are in memory."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    size = classifier.bundle.input_size
    if decode_workers < 1:  # no overlap: read, decode, classify one batch after the other
        for chunk in chunks:
            prepared = [prepare_path(path, size) for path in chunk]
            classifier.complete([p for p in prepared if p.error is None], preset)
            yield from prepared
            if progress is not None:
                progress.update(len(prepared))
        return
    with ThreadPoolExecutor(max_workers=decode_workers) as pool:
        def submit(chunk):
            return [pool.submit(prepare_path, path, size) for path in chunk]

        pending = submit(chunks[0]) if chunks else []
        for index in range(len(chunks)):
            prepared = [future.result() for future in pending]
            pending = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
            classifier.complete([p for p in prepared if p.error is None], preset)
            yield from prepared
            if progress is not None:
                progress.update(len(prepared))


def heatmap_file_name(path: str, index: int) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(path).name)[:80]
    return f"{index:05d}_{stem}_heatmap.png"


class Outputs:
    """Writes each prediction as it arrives: records (JSONL/CSV), heatmap PNGs, PDF entries."""

    def __init__(self, classifier, fmt: str, handle, heatmap_dir: Path | None, want_report: bool,
                 extra_columns: tuple[str, ...] = ()):
        self.classifier, self.fmt, self.handle = classifier, fmt, handle
        self.extra_columns = extra_columns
        self.heatmap_dir, self.want_report = heatmap_dir, want_report
        self.failed, self.count, self.report_entries = 0, 0, []
        self.writer = None
        if fmt == "csv":
            self.writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS + list(extra_columns))
            self.writer.writeheader()

    def add(self, prediction, record: dict | None = None) -> None:
        from utils.heatmap import overlay_heatmap

        record = record or prediction.as_record()
        if self.writer is None:
            self.handle.write(json.dumps(record) + "\n")
        else:
            self.writer.writerow({**csv_row(record), **{c: record.get(c, "") for c in self.extra_columns}})
        self.handle.flush()
        self.count += 1
        self.failed += prediction.failed
        overlay = None
        if prediction.error is None and (self.heatmap_dir or self.want_report):
            overlay = overlay_heatmap(prediction.model_input, prediction.heatmap(prediction.label))
            if self.heatmap_dir:
                from PIL import Image

                Image.fromarray(overlay).save(self.heatmap_dir / heatmap_file_name(prediction.name, self.count))
        if self.want_report:
            self.report_entries.append({**record, "name": prediction.name,
                                        "model_input": prediction.model_input, "overlay": overlay})


def default_precision(model_dir: Path | None) -> str:
    """The engine every serving path runs (utils.bundle.serving_precision), so the CLI, the
    app, PACS and Ray give one film one verdict."""
    import json

    from utils.bundle import METADATA_FILE, ModelBundleError, bundle_dir, serving_precision

    try:
        metadata = json.loads((Path(model_dir or bundle_dir()) / METADATA_FILE).read_text())
        return serving_precision(metadata)
    except (OSError, ValueError, ModelBundleError):
        return "float32"  # load_bundle reports what is wrong


def load_classifier(model_dir: Path | None, precision: str = "float32"):
    """The bundle's Classifier, or None after printing why it cannot load."""
    from utils.bundle import ModelBundleError, load_bundle
    from utils.classifier import Classifier

    try:
        return Classifier(load_bundle(model_dir), precision=precision)
    except (ModelBundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def run_ray(args) -> int:
    """predict --engine ray: Ray Data (utils.ray_batch), imported only here."""
    if args.output is None:
        print("error: --engine ray writes its records into a folder: give --output DIR", file=sys.stderr)
        return 2
    if args.heatmaps or args.report:
        print("error: --heatmaps and --report are not available with --engine ray", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        from utils import ray_batch
    except ImportError:
        print("error: --engine ray needs Ray: pip install -r requirements-scale.txt", file=sys.stderr)
        return 1
    from utils.bundle import ModelBundleError

    try:
        summary = ray_batch.run(args.paths, args.output, args.format, args.address, args.workers, args.preset,
                                args.batch_size, args.model_dir, args.precision,
                                log=lambda m: print(m, file=sys.stderr))
    except (ModelBundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = ray_batch.failed_records(args.output, args.format)
    print(f"{summary['classified']} input(s) classified, {summary['already_recorded']} already had records; "
          f"records in {args.output}", file=sys.stderr)
    if failed:
        print(f"{failed} of {summary['inputs']} inputs could not be read properly (an error, or a truncated file: "
              "see their records)", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.cli", description="Bone X-ray Classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify images (files, folders or http(s) image URLs)")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="a file, a folder (searched recursively) or an "
                         "http(s) image URL (private and loopback addresses are refused; see BONE_XRAY_URL_ALLOW)")
    predict.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl",
                         help="parquet: with --engine ray only")
    predict.add_argument("--output", type=Path, help="write here instead of stdout (with --engine ray: a folder)")
    predict.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="ray: Ray Data on a cluster (pip install -r requirements-scale.txt); SOURCE may "
                              "then also be any pyarrow filesystem URI (s3://, gs://, ...)")
    predict.add_argument("--address", help="with --engine ray: the cluster to join ('auto': the one started with "
                                           "'ray start'); default: start a local one")
    predict.add_argument("--workers", type=int, default=1, help="with --engine ray: classifier actors (each loads "
                                                                 "the model once)")
    predict.add_argument("--precision", choices=("float32", "int8"), default=None,
                         help="int8 (the default when the bundle ships it, as in the app): the quantized engine "
                              "that passed the equivalence check in the model card, about 3.5x faster; float32: the "
                              "exact engine (default: $BONE_XRAY_PRECISION, as for the app)")
    predict.add_argument("--preset", choices=("balanced", "fracture_sensitive"), default="balanced")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--model-dir", type=Path, help="model bundle folder (default: model/)")
    predict.add_argument("--heatmaps", type=Path, metavar="DIR", help="write heatmap overlay PNGs here (the model's fracture map, or Grad-CAM)")
    predict.add_argument("--report", type=Path, metavar="PDF", help="write a PDF report, one page per image")
    predict.add_argument("--reference", default="", help="study/patient reference printed in the PDF")
    pacs = commands.add_parser("pacs", help="classify the radiographs of PACS studies over DICOMweb",
                               description="Credentials come from the environment (BONE_XRAY_PACS_USERNAME and "
                               "_PASSWORD, or _TOKEN; _CA_BUNDLE for a private CA), never from the command line.")
    pacs.add_argument("--server", metavar="URL", help="DICOMweb root (default: $BONE_XRAY_PACS_URL)")
    select = pacs.add_argument_group("study selector (at least one)")
    select.add_argument("--study", metavar="UID", help="StudyInstanceUID")
    select.add_argument("--patient-id", metavar="ID")
    select.add_argument("--accession", metavar="N", help="AccessionNumber")
    select.add_argument("--since", metavar="YYYYMMDD", help="studies from this date on")
    pacs.add_argument("--store", action="store_true",
                      help="write a DICOM SR and a Secondary Capture per film into each study (new objects only)")
    pacs.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    pacs.add_argument("--output", type=Path, help="write here instead of stdout")
    pacs.add_argument("--preset", choices=("balanced", "fracture_sensitive"), default="balanced")
    pacs.add_argument("--batch-size", type=int, default=8)
    pacs.add_argument("--model-dir", type=Path, help="model bundle folder (default: model/)")
    return parser


def run_pacs(args, classifier) -> int:
    """The `pacs` command: each matching study in turn, records streamed as they come."""
    from tqdm import tqdm

    from utils.pacs import PacsConfig, PacsError, connect, find_studies, run_study

    try:
        client = connect(PacsConfig.from_environment(args.server))
        studies = find_studies(client, study_uid=args.study, patient_id=args.patient_id, accession=args.accession,
                               since=args.since)
    except PacsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not studies:
        print("error: no study on the PACS matches the selector", file=sys.stderr)
        return 1
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    outputs = Outputs(classifier, args.format, handle, None, False, extra_columns=PACS_COLUMNS)
    status = 0
    try:
        for study in studies:
            uid = study["StudyInstanceUID"]
            bars = []

            def on_images(n, uid=uid):
                bars.append(tqdm(total=n, unit="image", file=sys.stderr, desc=f"study ...{uid[-8:]}",
                                 disable=n < PROGRESS_MIN_FILES))

            try:
                run = run_study(client, classifier, uid, args.preset, args.batch_size, args.store,
                                on_record=lambda record, prediction: outputs.add(prediction, record),
                                on_images=on_images, progress=lambda k: bars[0].update(k))
            except PacsError as exc:
                print(f"error: study {uid}: {exc}", file=sys.stderr)
                status = 1
                continue
            finally:
                for bar in bars:
                    bar.close()
            for note in run.skipped:
                print(f"note: {note}", file=sys.stderr)
            if args.store:
                print(f"stored in study {uid}: {len(run.stored_sr)} SR, {len(run.stored_captures)} secondary "
                      f"capture(s) of {run.classified} classified film(s)", file=sys.stderr)
            for failure in run.store_failures:
                print(f"error: study {uid}: {failure}", file=sys.stderr)
            status = status or int(not run.ok)
    finally:
        if args.output:
            handle.close()
    if outputs.failed:
        print(f"{outputs.failed} of {outputs.count} images could not be read properly (an error, or a truncated "
              "file: see their records)", file=sys.stderr)
    return status


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on usage errors
    if args.command == "pacs":
        if args.batch_size < 1:
            print("error: --batch-size must be at least 1", file=sys.stderr)
            return 2
        if not (args.study or args.patient_id or args.accession or args.since):
            print("error: choose the studies with --study, --patient-id, --accession or --since", file=sys.stderr)
            return 2
        classifier = load_classifier(args.model_dir, default_precision(args.model_dir))
        return 1 if classifier is None else run_pacs(args, classifier)
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.precision is None:
        args.precision = default_precision(args.model_dir)
    if args.engine == "ray":
        return run_ray(args)
    if args.format == "parquet":
        print("error: --format parquet needs --engine ray", file=sys.stderr)
        return 2
    paths = expand_paths(args.paths)
    if not paths:
        print("error: the folders given contain no files", file=sys.stderr)
        return 2
    classifier = load_classifier(args.model_dir, args.precision)
    if classifier is None:
        return 1
    from tqdm import tqdm

    progress = tqdm(total=len(paths), unit="image", file=sys.stderr,
                    disable=len(paths) < PROGRESS_MIN_FILES)
    if args.heatmaps:
        args.heatmaps.mkdir(parents=True, exist_ok=True)
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    outputs = Outputs(classifier, args.format, handle, args.heatmaps, args.report is not None)
    try:
        for prediction in predict_paths(classifier, paths, args.preset, args.batch_size, progress):
            outputs.add(prediction)
    finally:
        progress.close()
        if args.output:
            handle.close()
    if args.report:
        from utils.report import build_pdf

        args.report.write_bytes(build_pdf(outputs.report_entries, classifier.bundle.metadata,
                                          args.preset, args.reference))
    if outputs.failed:
        print(f"{outputs.failed} of {outputs.count} inputs could not be read properly (an error, or a truncated "
              "file: see their records)", file=sys.stderr)
    return 1 if outputs.failed else 0


if __name__ == "__main__":
    sys.exit(main())
