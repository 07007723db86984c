"""Batch inference on Ray Data, the edge adapter behind `predict ... --engine ray`.

    python -m utils.cli predict SOURCE... --engine ray --output DIR [--address auto] [--workers N]

- Inputs: local files and folders (expanded as the local CLI does: recursive, sorted, hidden
  entries skipped) or any URI pyarrow's filesystems read (s3://, gs://, hdfs://, file://).
- The bytes are read by `ray.data.read_binary_files`; classification runs in an actor pool
  whose actors load the bundle once each. Decoding and preprocessing
  (`utils.core.classifier.prepare_input`, the same code as the local path) run inside those
  actors, in threads (`--ray-decode actor`, the default: on one machine it avoids sending
  every decoded film through the object store), or in separate `map_batches` tasks
  (`--ray-decode tasks`, which a cluster can place on other nodes). Ray's writers write JSON
  lines, CSV or Parquet with the local CLI's record schema.
- Resumable: records already in the output folder are read first and their inputs skipped.
- A bad file gives its error record and stops nothing.

Ray is optional (requirements-scale.txt): the app and the local CLI never import this module.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from utils.adapters.inputs import MAX_FILE_BYTES, expand_paths
from utils.core.bundle import load_bundle
from utils.core.classifier import Classifier, Prediction, make_engine, prepare_input
from utils.core.decode import is_incomplete_warning
from utils.core.record import csv_row

FORMATS = ("jsonl", "csv", "parquet")
DECODE_PLACES = ("actor", "tasks")
DECODE_CPUS = 0.5  # the CPU reservation of a read or decode task
OBJECT_STORE_BUDGET = 256 * 2**20  # bytes of blocks in flight (see quiet_ray)
FILE_SUFFIX = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}


def is_uri(text: str) -> bool:
    return "://" in text and not text.startswith(("http://", "https://"))


def list_uri(uri: str) -> list[str]:
    """Files under a pyarrow filesystem URI (a file or a folder, recursively), sorted."""
    filesystem, root = pafs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        return [uri]  # reported as that input's error record
    found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    names = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and not any(part.startswith(".") for part in Path(f.path).relative_to(root).parts)
    )
    return [f"{scheme}://{name}" for name in names]


def input_paths(sources: list[str]) -> list[str]:
    """Every input as the record's `path` will name it: local paths as the local CLI names
    them (relative stays relative), URIs as URIs."""
    paths: list[str] = []
    for source in sources:
        paths += list_uri(source) if is_uri(source) else [str(p) for p in expand_paths([source])]
    return paths


def read_records(output: Path, fmt: str) -> list[dict]:
    """Every record in the output folder (CSV rows as the CSV writer wrote them); a line cut
    short by an interrupted write is left out."""
    records: list[dict] = []
    for name in sorted(glob.glob(str(output / f"*.{FILE_SUFFIX[fmt]}"))):
        if fmt == "parquet":
            try:
                records += pq.read_table(name).to_pylist()
            except Exception:
                continue
        elif fmt == "csv":
            with open(name, newline="") as handle:
                records += [row for row in csv.DictReader(handle) if row.get("path")]
        else:
            with open(name) as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and "path" in record:
                        records.append(record)
    return records


def recorded_paths(output: Path, fmt: str) -> set[str]:
    """The inputs that already have a record (a resumed run skips them)."""
    return {str(r["path"]) for r in read_records(output, fmt)}


def failed_records(output: Path, fmt: str) -> int:
    """Records of inputs that could not be read properly: an error, or missing image data."""
    return sum(
        bool(r.get("error")) or any(is_incomplete_warning(w) for w in warning_list(r))
        for r in read_records(output, fmt)
    )


def warning_list(record: dict) -> list[str]:
    warnings = record.get("warnings") or []
    if isinstance(warnings, str):  # the CSV writer joins them
        return [warnings]
    return list(warnings)


def read_path(path: str) -> str:
    """What read_binary_files is given for an input: local paths absolute (Ray's workers do
    not share the driver's working folder), URIs as they are."""
    return path if is_uri(path) else os.path.abspath(path)


def source_roots(sources: list[str]) -> list[tuple[str, str]]:
    """(absolute prefix, prefix as the record names it) per local source, longest first:
    enough for a task to turn a read path back into the local CLI's name for it."""
    roots = {os.path.abspath(s): str(Path(s)) for s in sources if not is_uri(s)}
    return sorted(roots.items(), key=lambda item: -len(item[0]))


def display_path(read_as: str, roots: list[tuple[str, str]]) -> str:
    for absolute, shown in roots:
        if read_as == absolute or read_as.startswith(absolute.rstrip(os.sep) + os.sep):
            return shown + read_as[len(absolute) :]
    return read_as


FACT_FIELDS = ("image_size", "age_years", "body_part", "population")


def decode_batch(
    batch: dict[str, np.ndarray],
    roots: list[tuple[str, str]],
    input_size: int,
    max_bytes: int,
    population: str = "unknown",
) -> dict[str, np.ndarray]:
    """map_batches task: bytes -> model inputs (the local path's prepare_input), with what the
    film says of its intended use (size, header age and body part) and the user's population."""
    columns = ("path", "model_input", "warnings", "not_xray", "error", "incomplete", "facts")
    out: dict[str, list[Any]] = {k: [] for k in columns}
    for read_as, data in zip(batch["path"], batch["bytes"]):
        path = display_path(str(read_as), roots)
        if len(data) > max_bytes:
            prediction = prepare_input(path, b"", input_size, population)
            prediction.error = f"The file is larger than {max_bytes // 2**20} MB."
        else:
            prediction = prepare_input(path, bytes(data), input_size, population)
        out["path"].append(path)
        out["model_input"].append(
            prediction.model_input
            if prediction.model_input is not None
            else np.zeros((input_size, input_size), np.uint8)
        )
        out["warnings"].append(json.dumps(prediction.warnings))
        out["not_xray"].append(prediction.not_xray or "")
        out["error"].append(prediction.error or "")
        out["incomplete"].append(prediction.incomplete or "")
        out["facts"].append(json.dumps({k: getattr(prediction, k) for k in FACT_FIELDS}))
    return {
        "path": np.array(out["path"], dtype=object),
        "model_input": np.stack(out["model_input"]),
        "warnings": np.array(out["warnings"], dtype=object),
        "not_xray": np.array(out["not_xray"], dtype=object),
        "error": np.array(out["error"], dtype=object),
        "incomplete": np.array(out["incomplete"], dtype=object),
        "facts": np.array(out["facts"], dtype=object),
    }


@dataclass(frozen=True)
class DecodeInActor:
    """What an actor needs to decode the raw bytes itself (decode="actor")."""

    roots: list[tuple[str, str]]
    input_size: int
    max_bytes: int
    threads: int
    population: str = "unknown"


class ClassifyBatch:
    """map_batches actor: loads the bundle once, then classifies batches: decoded ones, or raw
    bytes that it decodes first in its own threads (decode="actor")."""

    def __init__(
        self, model_dir: str | None, preset: str, precision: str, threads: int, decode: DecodeInActor | None = None
    ):
        bundle = load_bundle(Path(model_dir) if model_dir else None, load_keras=False)
        self.classifier = Classifier(bundle, make_engine(bundle, precision=precision, threads=threads), precision)
        self.preset = preset
        self.decode = decode
        self.pool = ThreadPoolExecutor(max_workers=decode.threads) if decode else None

    def decoded(self, batch: dict) -> dict:
        if self.decode is None or "bytes" not in batch or self.pool is None:
            return batch
        d = self.decode
        parts = [
            {"path": batch["path"][i : i + 1], "bytes": batch["bytes"][i : i + 1]} for i in range(len(batch["path"]))
        ]
        done = list(
            self.pool.map(lambda part: decode_batch(part, d.roots, d.input_size, d.max_bytes, d.population), parts)
        )
        return {key: np.concatenate([part[key] for part in done]) for key in done[0]}

    def __call__(self, batch: dict) -> dict:
        batch = self.decoded(batch)
        predictions = []
        for i, path in enumerate(batch["path"]):
            prediction = Prediction(
                name=str(path),
                warnings=json.loads(batch["warnings"][i]),
                not_xray=batch["not_xray"][i] or None,
                error=batch["error"][i] or None,
                incomplete=batch["incomplete"][i] or None,
            )
            facts = json.loads(batch["facts"][i])
            prediction.image_size = tuple(facts["image_size"]) if facts["image_size"] else None
            prediction.age_years, prediction.body_part = facts["age_years"], facts["body_part"]
            prediction.population = facts["population"]
            if prediction.error is None:
                prediction.model_input = batch["model_input"][i]
            predictions.append(prediction)
        self.classifier.complete([p for p in predictions if p.error is None], self.preset)
        return pd.DataFrame([p.as_record() for p in predictions])


def flat_rows(frame):
    """The CSV writer's rows: the local CLI's CSV columns."""
    return pd.DataFrame([csv_row(r) for r in frame.to_dict("records")])


def quiet_ray() -> None:
    """Ray Data settings for a batch job: a memory budget, and no per-operator progress
    lines (they would drown the CLI's own messages)."""
    import ray  # noqa: PLC0415  (Ray is optional (requirements-scale.txt))

    context = ray.data.DataContext.get_current()
    # Decoding outruns the classifier; without a cap the decoded batches pile up in the object
    # store (147 KB a film) until its default limit, a third of RAM: memory would grow with
    # the archive. With this budget Ray Data backpressures the decode tasks instead.
    limits = context.execution_options.resource_limits
    context.execution_options.resource_limits = limits.copy(object_store_memory=OBJECT_STORE_BUDGET)
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


@dataclass(frozen=True)
class RayOptions:
    """How a Ray batch runs: the output format, the cluster (None: start a local one), the
    classifier actors, and what each classifies with."""

    fmt: str = "jsonl"
    address: str | None = None
    workers: int = 1
    preset: str = "balanced"
    batch_size: int = 8
    model_dir: Path | None = None
    precision: str = "float32"
    # "actor": the classifier actors decode the bytes themselves (no decoded films through the
    # object store; fastest on one machine); "tasks": separate decode tasks, which a cluster
    # can spread over other nodes than the actors'.
    decode: str = "actor"
    # What the user said of the patients (adult, child, unknown); a DICOM header's age wins.
    population: str = "unknown"


def run(
    sources: list[str], output: Path, options: RayOptions | None = None, log: Callable[[str], object] = print
) -> dict[str, int]:
    """Classify every input not yet in `output` on a Ray cluster; returns counts."""
    import ray  # noqa: PLC0415  (Ray is optional (requirements-scale.txt))

    options = options or RayOptions()
    if options.decode not in DECODE_PLACES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_PLACES)}, not {options.decode!r}")
    paths = input_paths(sources)
    output.mkdir(parents=True, exist_ok=True)
    done = recorded_paths(output, options.fmt)
    todo = [p for p in paths if p not in done]
    summary = {"inputs": len(paths), "already_recorded": len(paths) - len(todo), "classified": 0}
    if not todo:
        log(f"all {len(paths)} inputs already have records in {output}")
        return summary
    bundle = load_bundle(options.model_dir, load_keras=False)  # checks the bundle before a cluster starts
    join_or_start_cluster(ray, options)
    missing = [p for p in todo if not is_uri(p) and not os.path.isfile(read_path(p))]
    readable = [read_path(p) for p in todo if p not in set(missing)]
    quiet_ray()
    datasets = [classified(ray, readable, sources, bundle.input_size, options)] if readable else []
    if missing:
        datasets.append(ray.data.from_items([Prediction(name=p, error="No such file.").as_record() for p in missing]))
    write_records(datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:]), output, options.fmt)
    summary["classified"] = len(todo)
    return summary


def classified(ray: Any, readable: list[str], sources: list[str], input_size: int, options: RayOptions) -> Any:
    """The Ray dataset of records for the readable inputs: read, decode, classify."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    # Each actor's interpreter uses its share of the cores; the actors reserve less than all
    # of them so that the read and decode tasks always find a slot (else a 2-core node starves).
    threads = max(1, int(cpus) // max(options.workers, 1))
    actor_cpus = min(1.0, max(0.25, (cpus - DECODE_CPUS) / options.workers))
    data = ray.data.read_binary_files(readable, include_paths=True, num_cpus=DECODE_CPUS)
    roots = source_roots(sources)
    in_actor = None
    if options.decode == "actor":
        in_actor = DecodeInActor(roots, input_size, MAX_FILE_BYTES, threads, options.population)
    else:
        data = data.map_batches(
            decode_batch,
            fn_kwargs={
                "roots": roots,
                "input_size": input_size,
                "max_bytes": MAX_FILE_BYTES,
                "population": options.population,
            },
            batch_size=options.batch_size,
            batch_format="numpy",
            num_cpus=DECODE_CPUS,
        )
    return data.map_batches(
        ClassifyBatch,
        fn_constructor_kwargs={
            "model_dir": str(options.model_dir) if options.model_dir else None,
            "preset": options.preset,
            "precision": options.precision,
            "threads": threads,
            "decode": in_actor,
        },
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=actor_cpus,
    )


def join_or_start_cluster(ray: Any, options: RayOptions) -> None:
    """The cluster at options.address, else a local one sized to this machine."""
    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, options.workers), include_dashboard=False, log_to_driver=False)


def write_records(records: Any, output: Path, fmt: str) -> None:
    """Ray's writers, with the local CLI's record schema (CSV: its columns)."""
    if fmt == "csv":
        records.map_batches(flat_rows, batch_format="pandas").write_csv(str(output))
    elif fmt == "parquet":
        records.write_parquet(str(output))
    else:
        # pandas writes 10 decimals by default; 15 keeps the probabilities as the local CLI's.
        records.write_json(str(output), double_precision=15)
