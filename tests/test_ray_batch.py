"""predict --engine ray on a local Ray cluster against the local CLI: the same records (apart
from their order), bad files as error records, resume, the three formats, and Ray staying
out of the app and the local CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, png_bytes, synthetic_radiograph

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-scale.txt")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def jpeg_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """50 inputs: 44 synthetic films (PNG and JPEG, two folders deep) and 6 broken files."""
    root = tmp_path_factory.mktemp("archive")
    (root / "ward_a" / "day2").mkdir(parents=True)
    (root / "ward_b").mkdir()
    for i in range(44):
        film = (synthetic_radiograph(240 + 4 * (i % 5), 200, seed=i) * 255).astype(np.uint8)
        folder = root / ("ward_a/day2" if i % 3 == 0 else "ward_a" if i % 3 == 1 else "ward_b")
        if i % 2:
            (folder / f"film{i:02d}.png").write_bytes(png_bytes(film))
        else:
            (folder / f"film{i:02d}.jpg").write_bytes(jpeg_bytes(film))
    (root / "ward_b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "ward_b" / "empty.jpg").write_bytes(b"")
    (root / "ward_b" / "notes.txt").write_text("not an image")
    (root / "ward_b" / "truncated.jpg").write_bytes(jpeg_bytes(np.zeros((64, 64), np.uint8))[:30])
    (root / "ward_a" / "tiny.png").write_bytes(png_bytes(np.zeros((4, 4), np.uint8)))
    (root / "ward_a" / "fake.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 10)
    (root / ".hidden.png").write_bytes(b"skipped by both engines")
    return root


def local_records(paths: list[str], tmp_path) -> list[dict]:
    from utils.cli import main

    out = tmp_path / "local.jsonl"
    main(["predict", *paths, "--output", str(out)])
    return [json.loads(line) for line in out.read_text().splitlines()]


def ray_records(output) -> list[dict]:
    from utils.adapters.ray_batch import read_records

    return read_records(output, "jsonl")


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    """Identical apart from order; probabilities to 1e-12 (Ray's JSON writer keeps 15 decimals)."""
    assert len(a) == len(b)
    by_path = {r["path"]: r for r in b}
    assert len(by_path) == len(b) and set(by_path) == {r["path"] for r in a}
    for record in a:
        other = by_path[record["path"]]
        assert {**record, "probabilities": None} == {**other, "probabilities": None}
        if record["probabilities"] is None:
            assert other["probabilities"] is None
        else:
            for name, value in record["probabilities"].items():
                assert other["probabilities"][name] == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("decode", ["actor", "tasks"])
def test_ray_gives_the_local_records(local_ray, archive, tmp_path, monkeypatch, decode):
    from utils.cli import main

    monkeypatch.chdir(archive.parent)  # relative paths, named alike by both engines
    source = archive.name
    local = local_records([source], tmp_path)
    assert len(local) == 50 and sum(bool(r["error"]) for r in local) == 6
    command = ["predict", source, "--engine", "ray", "--output", str(tmp_path / "ray_out"), "--workers", "2"]
    status = main([*command, "--ray-decode", decode])
    assert status == 1  # some inputs failed, as the local CLI says too
    assert_same_records(local, ray_records(tmp_path / "ray_out"))


def test_a_rerun_skips_what_is_recorded(local_ray, archive, tmp_path):
    from utils.cli import main

    first = tmp_path / "first"
    shutil.copytree(archive / "ward_a", first / "ward_a")
    output = tmp_path / "out"
    main(["predict", str(first), "--engine", "ray", "--output", str(output)])
    recorded = ray_records(output)
    shutil.copytree(archive / "ward_b", first / "ward_b")
    messages = io.StringIO()
    sys_stderr, sys.stderr = sys.stderr, messages
    try:
        main(["predict", str(first), "--engine", "ray", "--output", str(output)])
    finally:
        sys.stderr = sys_stderr
    after = ray_records(output)
    n_b = len([p for p in (archive / "ward_b").iterdir()])
    assert f"{n_b} input(s) classified, {len(recorded)} already had records" in messages.getvalue()
    assert len(after) == len(recorded) + n_b == len({r["path"] for r in after})
    assert_same_records(local_records([str(first)], tmp_path), after)
    main(["predict", str(first), "--engine", "ray", "--output", str(output)])  # nothing left to do
    assert len(ray_records(output)) == len(after)


def test_csv_and_parquet_writers(local_ray, archive, tmp_path):
    from utils.adapters.ray_batch import read_records
    from utils.adapters.report import CSV_COLUMNS
    from utils.cli import main

    source = str(archive / "ward_b")
    local = {r["path"]: r for r in local_records([source], tmp_path)}
    main(["predict", source, "--engine", "ray", "--format", "csv", "--output", str(tmp_path / "csv")])
    rows = read_records(tmp_path / "csv", "csv")
    assert list(rows[0]) == CSV_COLUMNS and {r["path"] for r in rows} == set(local)
    for row in rows:
        if local[row["path"]]["probabilities"]:
            assert float(row["p_healthy"]) == pytest.approx(local[row["path"]]["probabilities"]["healthy"], abs=1e-6)
        assert bool(row["error"]) == bool(local[row["path"]]["error"])
    main(["predict", source, "--engine", "ray", "--format", "parquet", "--output", str(tmp_path / "pq")])
    assert_same_records(list(local.values()), read_records(tmp_path / "pq", "parquet"))


def test_usage_errors(tmp_path):
    from utils.cli import main

    assert main(["predict", str(tmp_path), "--engine", "ray"]) == 2  # no --output folder
    assert main(["predict", str(tmp_path), "--format", "parquet"]) == 2  # parquet needs ray
    assert main(["predict", str(tmp_path), "--engine", "ray", "--output", str(tmp_path / "o"),
                 "--report", str(tmp_path / "r.pdf")]) == 2


def test_the_app_and_the_local_cli_never_import_ray(archive):
    script = ("import sys, runpy\n"
              "from streamlit.testing.v1 import AppTest\n"
              "from utils.cli import main\n"
              f"main(['predict', {str(archive / 'ward_b')!r}, '--output', '/dev/null'])\n"
              "at = AppTest.from_file('app.py', default_timeout=120); at.run()\n"
              "assert not at.exception\n"
              "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
              "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ray" not in (REPO / "requirements.txt").read_text().lower().replace("array", "")
    assert "ray" in (REPO / "requirements-scale.txt").read_text()


def test_ray_follows_the_review_rules_of_the_local_cli(local_ray, tmp_path):
    from tests.test_review import dicom_film
    from utils.cli import main

    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "child.dcm").write_bytes(dicom_film(PatientAge="009Y"))
    (folder / "adult.dcm").write_bytes(dicom_film(PatientAge="040Y", seed=4))
    (folder / "unknown.png").write_bytes(png_bytes((synthetic_radiograph(seed=6) * 255).astype(np.uint8)))
    (folder / "chest.dcm").write_bytes(dicom_film(PatientAge="040Y", BodyPartExamined="CHEST", seed=7))
    (folder / "thumb.png").write_bytes(png_bytes((synthetic_radiograph(224, 224, seed=8) * 255).astype(np.uint8)))
    local = local_records([str(folder), "--population", "child"], tmp_path)
    main(["predict", str(folder), "--engine", "ray", "--output", str(tmp_path / "ray_out"), "--population", "child"])
    records = ray_records(tmp_path / "ray_out")
    assert_same_records(local, records)
    reasons = {r["path"].rsplit("/", 1)[-1]: r["review_reasons"] for r in records}
    assert "child" in reasons["child.dcm"] and "child" in reasons["unknown.png"]
    assert "child" not in reasons["adult.dcm"]  # the header's age wins over --population
    assert "body_part" in reasons["chest.dcm"] and "image_too_small" in reasons["thumb.png"]
