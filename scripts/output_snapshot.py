"""Write what the tool outputs for a fixed set of synthetic films, so two commits can be diffed.

Usage: python scripts/output_snapshot.py OUT_DIR [--ray]
       diff -r OUT_BEFORE OUT_AFTER

Covered: the CLI's JSONL and CSV records, its heatmap PNGs (pixel hashes), the PDF's text, a
Comprehensive SR and a Secondary Capture built from the CLI's records (with UIDs, dates and
times removed, since each run makes new ones), and with --ray the Ray engine's records.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pypdf import PdfReader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.adapters.dicom_results import build_results_sr, build_secondary_capture  # noqa: E402  (after sys.path)

VOLATILE_VRS = {"UI", "DA", "TM", "DT"}
HEADER_UIDS = {"study_instance_uid": "1.2.3.4", "series_instance_uid": "1.2.3.4.1"}
SOURCE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage


def film(seed: int, height: int = 900, width: int = 700) -> np.ndarray:
    """A dark field with a textured bright shaft and a gap: uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = 0.1 + 0.04 * rng.standard_normal((height, width))
    shaft = np.abs(xx - width * (0.4 + 0.2 * rng.random())) < width * 0.09
    image[shaft] += 0.55 + 0.05 * np.sin(yy[shaft] / 7.0)
    image[shaft & (np.abs(yy - height * (0.3 + 0.4 * rng.random())) < 4)] -= 0.4
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def dicom_of(pixels: np.ndarray) -> bytes:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(SOURCE_SOP_CLASS), UID("1.2.3.4.1.1")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SOURCE_SOP_CLASS, "1.2.3.4.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = HEADER_UIDS["study_instance_uid"], HEADER_UIDS["series_instance_uid"]
    ds.PatientName, ds.PatientID, ds.Modality = "Snapshot^Film", "SNAP-1", "CR"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
    ds.StudyDate, ds.StudyTime, ds.PatientBirthDate, ds.PatientSex = "20260101", "120000", "", "O"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_films(folder: Path) -> None:
    folder.mkdir(parents=True)
    Image.fromarray(film(1)).save(folder / "a_film.png")
    Image.fromarray(film(2)).save(folder / "b_film.jpg", quality=90)
    (folder / "c_film.dcm").write_bytes(dicom_of(film(3)))
    (folder / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    jpeg = io.BytesIO()
    Image.fromarray(film(4)).save(jpeg, format="JPEG", quality=90)
    (folder / "e_truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])


def cli(out: Path, *args: str) -> str:
    """The CLI's exit status and output, with OUT for the snapshot folder (so two snapshots compare)."""
    result = subprocess.run(
        [sys.executable, "-m", "utils.cli", "predict", *args], capture_output=True, text=True, cwd=REPO
    )
    return f"exit {result.returncode}\n{result.stdout}".replace(str(out.resolve()), "OUT")


def pixel_hashes(folder: Path) -> str:
    lines = [
        f"{p.name} {hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest()}"
        for p in sorted(folder.glob("*.png"))
    ]
    return "\n".join(lines) + "\n"


def pdf_text(path: Path, out: Path) -> str:
    """The PDF's text without its time stamp, with OUT for the snapshot folder."""
    pages = [page.extract_text().replace(str(out), "OUT") for page in PdfReader(path).pages]
    return "\n".join(line for text in pages for line in text.splitlines() if "UTC" not in line) + "\n"


def stable_json(dataset) -> str:
    def strip(node):
        if isinstance(node, dict):
            if node.get("vr") in VOLATILE_VRS:
                return {"vr": node["vr"]}
            return {key: strip(value) for key, value in node.items()}
        if isinstance(node, list):
            return [strip(item) for item in node]
        return node

    return json.dumps(strip(dataset.to_json_dict(bulk_data_threshold=1 << 30)), indent=1, sort_keys=True) + "\n"


def dicom_objects(records: list[dict], heatmaps: Path, out: Path) -> None:
    header = dcmread(io.BytesIO(dicom_of(film(3))))
    metadata = json.loads((REPO / "model" / "metadata.json").read_text())
    model = {"name": metadata["name"], "version": metadata["version"], "sha256": metadata["sha256"]}
    usable = [r for r in records if not r.get("error")]
    entries = [
        ({**r, **HEADER_UIDS, "sop_instance_uid": f"1.2.3.4.1.{i + 1}"}, SOURCE_SOP_CLASS) for i, r in enumerate(usable)
    ]
    (out / "sr.json").write_text(stable_json(build_results_sr(entries, header, model)))
    overlay = np.asarray(Image.open(sorted(heatmaps.glob("*.png"))[0]).convert("RGB"))
    capture = build_secondary_capture(header, overlay, usable[0], model, series_uid="1.2.3.9", instance_number=1)
    (out / "sc.json").write_text(stable_json(capture))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--ray", action="store_true", help="also run the Ray engine (starts a local cluster)")
    args = parser.parse_args()
    args.out = args.out.resolve()
    films, heatmaps = args.out / "films", args.out / "heatmaps"
    write_films(films)
    (args.out / "cli.jsonl").write_text(
        cli(
            args.out,
            str(films),
            "--heatmaps",
            str(heatmaps),
            "--report",
            str(args.out / "report.pdf"),
            "--reference",
            "SNAP-REF",
        )
    )
    (args.out / "cli.csv").write_text(cli(args.out, str(films), "--format", "csv"))
    (args.out / "heatmaps.txt").write_text(pixel_hashes(heatmaps))
    (args.out / "report.txt").write_text(pdf_text(args.out / "report.pdf", args.out))
    records = [json.loads(line) for line in (args.out / "cli.jsonl").read_text().splitlines()[1:] if line]
    dicom_objects(records, heatmaps, args.out)
    if args.ray:
        ray_out = args.out / "ray"
        status = cli(args.out, str(films), "--engine", "ray", "--output", str(ray_out))
        rows = sorted(
            line.replace(str(args.out).replace("/", "\\/"), "OUT")
            for p in sorted(ray_out.rglob("*.json*"))
            for line in p.read_text().splitlines()
        )
        (args.out / "ray.jsonl").write_text(status.splitlines()[0] + "\n" + "\n".join(rows) + "\n")
    for scratch in (films, heatmaps, args.out / "report.pdf", args.out / "ray"):
        if scratch.is_dir():
            for path in sorted(scratch.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            scratch.rmdir()
        elif scratch.exists():
            scratch.unlink()
    print(f"snapshot written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
