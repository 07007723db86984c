"""Many inputs through the classifier, the next batch read and decoded while the model runs on
this one: the loop the CLI, the batch benchmark and any new way in share."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.adapters.inputs import prepare_path
from utils.core.classifier import SERVING, Classifier, Prediction, Preparation

DECODE_WORKERS = 2  # threads reading and decoding the next batch while the model runs


@dataclass(frozen=True)
class Request:
    """How a batch of paths is classified: the decision preset, the batch size, and what the
    user said of the patients (a DICOM header's age wins over it)."""

    preset: str = "balanced"
    batch_size: int = 8
    population: str = "unknown"
    how: Preparation = SERVING  # the decoder and contrast stretch (a benchmark compares others)


def predict_paths(
    classifier: Classifier,
    paths: list[Path | str],
    request: Request,
    progress: Any = None,
    decode_workers: int = DECODE_WORKERS,
) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order. The next batch is read and decoded in a thread
    pool while the model runs on this one, so decoding and inference overlap (both release
    the GIL in their native code); at most two batches are in memory."""
    batch_size, preset = request.batch_size, request.preset
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    size = classifier.bundle.input_size

    def prepare(path: Path | str) -> Prediction:
        return prepare_path(path, size, request.population, request.how)

    if decode_workers < 1:  # no overlap: read, decode, classify one batch after the other
        for chunk in chunks:
            prepared = [prepare(path) for path in chunk]
            classifier.complete([p for p in prepared if p.error is None], preset)
            yield from prepared
            if progress is not None:
                progress.update(len(prepared))
        return
    with ThreadPoolExecutor(max_workers=decode_workers) as pool:

        def submit(chunk: list[Path | str]) -> list[Any]:
            return [pool.submit(prepare, path) for path in chunk]

        pending = submit(chunks[0]) if chunks else []
        for index in range(len(chunks)):
            prepared = [future.result() for future in pending]
            pending = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
            classifier.complete([p for p in prepared if p.error is None], preset)
            yield from prepared
            if progress is not None:
                progress.update(len(prepared))
