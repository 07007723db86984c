"""Where classified films go as they arrive: their records (JSON lines or CSV, with any extra
columns an adapter adds), heatmap overlay PNGs and the PDF report's pages; and what a run says
at its end about the films that need review. The CLI, PACS and any new way in share them."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import IO, Any

from PIL import Image

from utils.adapters.report import report_entry
from utils.core.classifier import Prediction
from utils.core.record import CSV_COLUMNS, csv_row
from utils.core.review import reason_text


def heatmap_file_name(path: str, index: int) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(path).name)[:80]
    return f"{index:05d}_{stem}_heatmap.png"


class Outputs:
    """Writes each prediction as it arrives: records (JSONL/CSV), heatmap PNGs, PDF entries."""

    def __init__(
        self,
        fmt: str,
        handle: IO[str],
        heatmap_dir: Path | None,
        want_report: bool,
        extra_columns: tuple[str, ...] = (),
    ) -> None:
        self.fmt, self.handle = fmt, handle
        self.extra_columns = extra_columns
        self.heatmap_dir, self.want_report = heatmap_dir, want_report
        self.failed, self.count = 0, 0
        self.reasons: Counter[str] = Counter()  # review reason -> films that gave it
        self.needs_review = 0
        self.report_entries: list[dict[str, Any]] = []
        self.writer: csv.DictWriter[str] | None = None
        if fmt == "csv":
            self.writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS + list(extra_columns))
            self.writer.writeheader()

    def add(self, prediction: Prediction, record: dict[str, Any] | None = None) -> None:
        """Write one prediction: its record (PredictionRecord's JSON, plus the extra columns an
        adapter added), its heatmap and its report page."""
        record = record or prediction.record().as_dict()
        if self.writer is None:
            self.handle.write(json.dumps(record) + "\n")
        else:
            self.writer.writerow({**csv_row(record), **{c: record.get(c, "") for c in self.extra_columns}})
        self.handle.flush()
        self.count += 1
        self.failed += prediction.failed
        self.needs_review += bool(record.get("review_reasons"))
        self.reasons.update(record.get("review_reasons") or ())
        overlay = prediction.overlay() if self.heatmap_dir or self.want_report else None
        if self.heatmap_dir and overlay is not None:
            Image.fromarray(overlay).save(self.heatmap_dir / heatmap_file_name(prediction.name, self.count))
        if self.want_report:
            self.report_entries.append(report_entry(prediction, record, overlay))


def review_summary(outputs: Outputs) -> list[str]:
    """The films that need review and why, in words, for the end of a run (stderr)."""
    if not outputs.needs_review:
        return []
    lines = [f"{outputs.needs_review} of {outputs.count} inputs need review (see review_reasons):"]
    lines += [f"  {count}: {reason_text(code)}" for code, count in outputs.reasons.most_common()]
    return lines
