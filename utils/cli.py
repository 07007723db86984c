"""Command line: classify radiographs without the web app.

    python -m utils.cli predict PATH|URL [PATH|URL ...] [--format jsonl|csv] [--output FILE]
                                [--preset balanced|fracture_sensitive] [--batch-size N]
                                [--population adult|child|unknown]
                                [--heatmaps DIR] [--report report.pdf] [--reference TEXT]

    python -m utils.cli pacs --server URL (--study UID | --patient-id ID | --accession N | --since YYYYMMDD)
                             [--store] [--format jsonl|csv] [--output FILE] [--preset ...] [--batch-size N]
                             [--population adult|child|unknown]

Folders are searched recursively; http(s) URLs are fetched under utils.adapters.url_input's rules
(the record's path is the URL). One record per input: path, label (the class the model leans
to), probabilities, uncertain, not_xray (the not-an-X-ray guard fired), warnings, error,
verdict (healthy, fractured, beyond_repair, needs_review or not_a_radiograph; null when the
input could not be read) and review_reasons (why a reader must decide; uncertain is true
exactly when there is one). --population says who the films are of; a DICOM header's age
wins over it. `pacs` records add the study, series and SOP instance UIDs, and
--store writes a DICOM SR and Secondary Captures into each study (see utils.adapters.pacs).
Exit status: 0 every input predicted, 1 some failed or were
incomplete (a truncated file: its record needs review, with the reason in its warnings; the rest
are still predicted), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from utils.adapters.inputs import expand_paths
from utils.adapters.read_ahead import Request, predict_paths
from utils.adapters.report import build_pdf
from utils.adapters.writers import Outputs, review_summary
from utils.core.bundle import ModelBundleError, bundle_dir, load_bundle, read_metadata, serving_precision
from utils.core.classifier import Classifier
from utils.core.intended_use import POPULATIONS

if TYPE_CHECKING:  # annotations only: the pacs command imports its adapter when it runs
    from utils.adapters.pacs import StudyOutcome

PROGRESS_MIN_FILES = 4
PACS_COLUMNS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")


def default_precision(model_dir: Path | None) -> str:
    """The engine every serving path runs (utils.core.bundle.serving_precision), so the CLI, the
    app, PACS and Ray give one film one verdict."""
    try:
        return serving_precision(read_metadata(Path(model_dir or bundle_dir())))
    except (OSError, ValueError, ModelBundleError):
        return "float32"  # load_bundle reports what is wrong


def ships_int8(model_dir: Path | None) -> bool:
    """Whether the bundle has an int8 engine (one passed its model card's equivalence check)."""
    try:
        return bool(read_metadata(Path(model_dir or bundle_dir())).get("runtime_int8"))
    except (OSError, ValueError, ModelBundleError):
        return False  # load_bundle reports what is wrong


def load_classifier(model_dir: Path | None, precision: str = "float32"):
    """The bundle's Classifier, or None after printing why it cannot load."""
    try:
        return Classifier(load_bundle(model_dir), precision=precision)
    except (ModelBundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def run_ray(args) -> int:
    """predict --engine ray: Ray Data (utils.adapters.ray_batch), imported only here."""
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
        from utils.adapters import ray_batch  # noqa: PLC0415  (Ray is optional (requirements-scale.txt))
    except ImportError:
        print("error: --engine ray needs Ray: pip install -r requirements-scale.txt", file=sys.stderr)
        return 1

    try:
        options = ray_batch.RayOptions(
            fmt=args.format,
            address=args.address,
            workers=args.workers,
            preset=args.preset,
            batch_size=args.batch_size,
            model_dir=args.model_dir,
            precision=args.precision,
            decode=args.ray_decode,
            population=args.population,
        )
        summary = ray_batch.run(args.paths, args.output, options, log=lambda m: print(m, file=sys.stderr))
    except (ModelBundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = ray_batch.failed_records(args.output, args.format)
    print(
        f"{summary['classified']} input(s) classified, {summary['already_recorded']} already had records; "
        f"records in {args.output}",
        file=sys.stderr,
    )
    if failed:
        print(
            f"{failed} of {summary['inputs']} inputs could not be read properly (an error, or a truncated file: "
            "see their records)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.cli", description="Bone X-ray Classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    add_predict_command(commands)
    add_pacs_command(commands)
    return parser


def add_predict_command(commands: Any) -> None:
    predict = commands.add_parser("predict", help="classify images (files, folders or http(s) image URLs)")
    predict.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a file, a folder (searched recursively) or an "
        "http(s) image URL (private and loopback addresses are refused; see BONE_XRAY_URL_ALLOW)",
    )
    predict.add_argument(
        "--format", choices=("jsonl", "csv", "parquet"), default="jsonl", help="parquet: with --engine ray only"
    )
    predict.add_argument("--output", type=Path, help="write here instead of stdout (with --engine ray: a folder)")
    predict.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: Ray Data on a cluster (pip install -r requirements-scale.txt); SOURCE may "
        "then also be any pyarrow filesystem URI (s3://, gs://, ...)",
    )
    predict.add_argument(
        "--address",
        help="with --engine ray: the cluster to join ('auto': the one started with "
        "'ray start'); default: start a local one",
    )
    predict.add_argument(
        "--workers", type=int, default=1, help="with --engine ray: classifier actors (each loads the model once)"
    )
    predict.add_argument(
        "--ray-decode",
        choices=("actor", "tasks"),
        default="actor",
        help="with --engine ray: decode inside the classifier actors (default; fastest on one machine) "
        "or in separate tasks (a cluster can run them on other nodes)",
    )
    predict.add_argument(
        "--precision",
        choices=("float32", "int8"),
        default=None,
        help="int8: the quantized engine, only for a bundle that ships one (it passed the equivalence "
        "check in the model card; the model card says whether it does and its speed), and then the "
        "default, as in the app; float32: the exact engine (default: $BONE_XRAY_PRECISION, as for the app)",
    )
    predict.add_argument("--preset", choices=("balanced", "fracture_sensitive"), default="balanced")
    add_population_option(predict)
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--model-dir", type=Path, help="model bundle folder (default: model/)")
    predict.add_argument(
        "--heatmaps",
        type=Path,
        metavar="DIR",
        help="write heatmap overlay PNGs here (the model's fracture map, or Grad-CAM)",
    )
    predict.add_argument("--report", type=Path, metavar="PDF", help="write a PDF report, one page per image")
    predict.add_argument("--reference", default="", help="study/patient reference printed in the PDF")


def add_population_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--population",
        choices=POPULATIONS,
        default="unknown",
        help="who the films are of: adult, child (under 18) or unknown (default). The model was validated "
        "on adults only: a child's film always needs review. A DICOM header's age wins over this",
    )


def add_pacs_command(commands: Any) -> None:
    pacs = commands.add_parser(
        "pacs",
        help="classify the radiographs of PACS studies over DICOMweb",
        description="Credentials come from the environment (BONE_XRAY_PACS_USERNAME and "
        "_PASSWORD, or _TOKEN; _CA_BUNDLE for a private CA), never from the command line.",
    )
    pacs.add_argument("--server", metavar="URL", help="DICOMweb root (default: $BONE_XRAY_PACS_URL)")
    select = pacs.add_argument_group("study selector (at least one)")
    select.add_argument("--study", metavar="UID", help="StudyInstanceUID")
    select.add_argument("--patient-id", metavar="ID")
    select.add_argument("--accession", metavar="N", help="AccessionNumber")
    select.add_argument("--since", metavar="YYYYMMDD", help="studies from this date on")
    pacs.add_argument(
        "--store",
        action="store_true",
        help="write a DICOM SR and a Secondary Capture per film into each study (new objects only)",
    )
    pacs.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    pacs.add_argument("--output", type=Path, help="write here instead of stdout")
    pacs.add_argument("--preset", choices=("balanced", "fracture_sensitive"), default="balanced")
    add_population_option(pacs)
    pacs.add_argument("--batch-size", type=int, default=8)
    pacs.add_argument("--model-dir", type=Path, help="model bundle folder (default: model/)")


def run_pacs(args: argparse.Namespace, classifier: Classifier) -> int:
    """The `pacs` command: each matching study in turn, records streamed as they come."""
    # DICOMweb and highdicom add about 0.5 s to every start; only this command needs them.
    from utils.adapters.pacs import (  # noqa: PLC0415
        PacsConfig,
        PacsError,
        StudyOptions,
        classify_studies,
        connect,
        find_studies,
    )

    try:
        client = connect(PacsConfig.from_environment(args.server))
        studies = find_studies(
            client, study_uid=args.study, patient_id=args.patient_id, accession=args.accession, since=args.since
        )
    except PacsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not studies:
        print("error: no study on the PACS matches the selector", file=sys.stderr)
        return 1
    options = StudyOptions(args.preset, args.batch_size, args.store, args.population)
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    outputs = Outputs(args.format, handle, None, False, extra_columns=PACS_COLUMNS)
    status = 0
    try:
        uids = [study["StudyInstanceUID"] for study in studies]
        for outcome in classify_studies(client, classifier, uids, options, outputs, pacs_progress):
            status = max(status, report_study(outcome, options.store_results))
    finally:
        if args.output:
            handle.close()
    for line in review_summary(outputs):
        print(line, file=sys.stderr)
    if outputs.failed:
        print(
            f"{outputs.failed} of {outputs.count} images could not be read properly (an error, or a truncated "
            "file: see their records)",
            file=sys.stderr,
        )
    return status


def pacs_progress(uid: str, total: int) -> tqdm:
    return tqdm(
        total=total, unit="image", file=sys.stderr, desc=f"study ...{uid[-8:]}", disable=total < PROGRESS_MIN_FILES
    )


def report_study(outcome: StudyOutcome, store: bool) -> int:
    """One study's notes and failures on stderr; 0 when all went well."""
    run = outcome.run
    if run is None:
        print(f"error: study {outcome.study_uid}: {outcome.error}", file=sys.stderr)
        return 1
    for note in run.skipped:
        print(f"note: {note}", file=sys.stderr)
    if store:
        print(
            f"stored in study {run.study_uid}: {len(run.stored_sr)} SR, {len(run.stored_captures)} secondary "
            f"capture(s) of {run.classified} classified film(s)",
            file=sys.stderr,
        )
    for failure in run.store_failures:
        print(f"error: study {run.study_uid}: {failure}", file=sys.stderr)
    return int(not run.ok)


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on usage errors
    if args.batch_size < 1:
        return usage_error("--batch-size must be at least 1")
    if args.command == "pacs":
        if not (args.study or args.patient_id or args.accession or args.since):
            return usage_error("choose the studies with --study, --patient-id, --accession or --since")
        classifier = load_classifier(args.model_dir, default_precision(args.model_dir))
        return 1 if classifier is None else run_pacs(args, classifier)
    if args.precision == "int8" and not ships_int8(args.model_dir):
        return usage_error(
            "--precision int8: this model bundle ships no int8 engine (none passed the equivalence check in "
            "its model card); leave --precision out or choose float32"
        )
    if args.precision is None:
        args.precision = default_precision(args.model_dir)
    if args.engine == "ray":
        return run_ray(args)
    if args.format == "parquet":
        return usage_error("--format parquet needs --engine ray")
    return run_predict(args)


def run_predict(args: argparse.Namespace) -> int:
    """The local `predict` command: records streamed as each batch is classified."""
    paths = expand_paths(args.paths)
    if not paths:
        return usage_error("the folders given contain no files")
    classifier = load_classifier(args.model_dir, args.precision)
    if classifier is None:
        return 1
    progress = tqdm(total=len(paths), unit="image", file=sys.stderr, disable=len(paths) < PROGRESS_MIN_FILES)
    if args.heatmaps:
        args.heatmaps.mkdir(parents=True, exist_ok=True)
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    outputs = Outputs(args.format, handle, args.heatmaps, args.report is not None)
    try:
        request = Request(args.preset, args.batch_size, args.population)
        for prediction in predict_paths(classifier, paths, request, progress):
            outputs.add(prediction)
    finally:
        progress.close()
        if args.output:
            handle.close()
    if args.report:
        args.report.write_bytes(
            build_pdf(outputs.report_entries, classifier.bundle.metadata, args.preset, args.reference)
        )
    for line in review_summary(outputs):
        print(line, file=sys.stderr)
    if outputs.failed:
        print(
            f"{outputs.failed} of {outputs.count} inputs could not be read properly (an error, or a truncated "
            "file: see their records)",
            file=sys.stderr,
        )
    return 1 if outputs.failed else 0


if __name__ == "__main__":
    sys.exit(main())
