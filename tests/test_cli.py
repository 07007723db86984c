"""The CLI's output contract and exit codes, on the bundled model."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, png_bytes, synthetic_radiograph
from tests.dicom_fixtures import dicom_bytes, make_dicom, ramp
from utils import cli
from utils.core.inference import CLASSES


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(png_bytes((synthetic_radiograph(seed=1) * 255).astype(np.uint8)))
    (tmp_path / "sub" / "b_no_extension").write_bytes(dicom_bytes(make_dicom(ramp(400, 300))))
    return tmp_path


def run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_jsonl_contract_and_exit_0(folder, capsys, bundle_dir):
    code, out, _ = run_cli(["predict", str(folder)], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["path"] for r in records] == [str(folder / "a.png"), str(folder / "sub" / "b_no_extension")]
    for record in records:
        assert set(record) == {"path", "label", "probabilities", "uncertain", "not_xray", "warnings", "error", "verdict",
                               "review_reasons"}
        assert record["label"] in CLASSES and record["error"] is None
        assert set(record["probabilities"]) == set(CLASSES)
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert isinstance(record["uncertain"], bool) and isinstance(record["warnings"], list)
        assert record["uncertain"] == bool(record["review_reasons"])
        if record["uncertain"]:  # a synthetic film may look like no radiograph to the guard
            assert record["verdict"] in ("needs_review", "not_a_radiograph")
        else:
            assert record["verdict"] == record["label"]


def test_failures_give_exit_1_and_the_rest_is_still_predicted(folder, capsys, bundle_dir):
    (folder / "notes.png").write_text("not an image")
    code, out, err = run_cli(["predict", str(folder), str(folder / "missing.dcm")], capsys)
    records = {json.loads(line)["path"]: json.loads(line) for line in out.splitlines()}
    assert code == 1
    assert records[str(folder / "notes.png")]["label"] is None
    assert "not an image" in records[str(folder / "notes.png")]["error"]
    assert records[str(folder / "missing.dcm")]["error"] == "No such file."
    assert records[str(folder / "a.png")]["label"] in CLASSES
    assert "2 of 4" in err


def test_csv_output_file(folder, tmp_path, capsys, bundle_dir):
    out_file = tmp_path / "results.csv"
    code, out, _ = run_cli(["predict", str(folder), "--format", "csv", "--output", str(out_file),
                            "--preset", "fracture_sensitive", "--batch-size", "1"], capsys)
    assert code == 0 and out == ""
    rows = list(csv.DictReader(out_file.open()))
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in CLASSES
        assert sum(float(row[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)


def test_batching_does_not_change_results(folder, capsys, bundle_dir):
    _, one, _ = run_cli(["predict", str(folder), "--batch-size", "1"], capsys)
    _, many, _ = run_cli(["predict", str(folder), "--batch-size", "8"], capsys)
    for a, b in zip(one.splitlines(), many.splitlines()):
        pa, pb = json.loads(a)["probabilities"], json.loads(b)["probabilities"]
        assert all(abs(pa[c] - pb[c]) < 1e-4 for c in CLASSES)


@pytest.mark.parametrize("args", [[], ["predict"], ["predict", "x", "--format", "xml"],
                                  ["predict", "x", "--batch-size", "0"]])
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = cli.main(args)
        raise SystemExit(code)
    assert exit_info.value.code == 2


def test_int8_on_a_bundle_without_an_int8_engine_is_a_usage_error(folder, tmp_path, capsys, bundle_dir):
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata.pop("runtime_int8", None)
    (copy / "metadata.json").write_text(json.dumps(metadata))
    code, out, err = run_cli(["predict", str(folder), "--precision", "int8", "--model-dir", str(copy)], capsys)
    assert code == 2 and out == "" and "ships no int8 engine" in err


def test_empty_folder_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path)]) == 2


def test_broken_bundle_exits_1_with_a_message(folder, tmp_path, capsys):
    code, out, err = run_cli(["predict", str(folder), "--model-dir", str(tmp_path / "nothing")], capsys)
    assert code == 1 and "No model metadata" in err and out == ""


def test_runs_as_a_module(folder, bundle_dir):
    result = subprocess.run([sys.executable, "-m", "utils.cli", "predict", str(folder / "a.png")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    assert json.loads(result.stdout)["label"] in CLASSES


def test_heatmaps_and_pdf_report(folder, tmp_path, capsys, bundle_dir):
    from pypdf import PdfReader

    (folder / "bad.png").write_bytes(b"nope")
    heatmaps, report = tmp_path / "heatmaps", tmp_path / "report.pdf"
    code, _, _ = run_cli(["predict", str(folder), "--heatmaps", str(heatmaps), "--report", str(report),
                          "--reference", "Study 7"], capsys)
    assert code == 1
    pngs = sorted(p.name for p in heatmaps.iterdir())
    assert len(pngs) == 2 and all(p.endswith("_heatmap.png") for p in pngs)
    pages = PdfReader(str(report)).pages
    assert len(pages) == 4  # a summary, then one page per input, the failed one included
    assert "3 films" in pages[0].extract_text() and "bad.png: not classified" in pages[0].extract_text()
    text = pages[1].extract_text()
    assert "Study 7" in text and "Not a medical device" in text and "Verdict" in text
    assert "Not classified" in "".join(p.extract_text() for p in pages)
