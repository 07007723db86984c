"""Batch benchmark: CLI throughput by batch size, and the app's peak memory on a big batch.

Usage: python -m benchmarks.batch [--images 200] [--cli-images 48]

1. CLI path (read, decode, preprocess, classify) over synthetic 2,000 x 2,500 JPEGs in a
   folder, batch size 1 vs the CLI default, images per second.
2. The app (through streamlit.testing.v1.AppTest, in a fresh process) given --images such
   images in one upload: peak RSS of that process, and RSS before the upload.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 2500, 2000


def synthetic_jpegs(count: int) -> list[tuple[str, bytes]]:
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from tests.conftest import synthetic_radiograph

    base = synthetic_radiograph(HEIGHT, WIDTH, seed=0)
    files = []
    for i in range(count):
        shifted = np.roll(base, 17 * i, axis=1)  # distinct files, same statistics
        buffer = io.BytesIO()
        Image.fromarray((shifted * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        files.append((f"img{i:04d}.jpg", buffer.getvalue()))
    return files


# Peak RSS from VmHWM: ru_maxrss would carry the parent's high-water mark across fork + exec.
APP_MEMORY = r"""
import json, sys, psutil
from streamlit.testing.v1 import AppTest
files = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(__import__("pathlib").Path(sys.argv[1]).iterdir())]
at = AppTest.from_file("app.py", default_timeout=3600)
at.run()
before = psutil.Process().memory_info().rss
at.file_uploader[0].set_value(files)
del files
at.run()
assert not at.exception, at.exception
rows = len(at.dataframe[0].value)
print(json.dumps({"rows": rows, "rss_before_upload": before,
                  "rss_after": psutil.Process().memory_info().rss,
                  "peak_rss": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024}))
"""


def cli_throughput(classifier, folder: Path, batch_size: int) -> float:
    """The CLI's own read-decode-classify loop with a loaded model (model loading excluded)."""
    from utils.cli import expand_paths, predict_paths

    paths = expand_paths([str(folder)])
    start = time.perf_counter()
    predictions = list(predict_paths(classifier, paths, "balanced", batch_size))
    assert all(p.label for p in predictions)
    return len(paths) / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--cli-images", type=int, default=48)
    args = parser.parse_args(argv)
    figures = {"cores": os.cpu_count(), "image": f"{WIDTH}x{HEIGHT} JPEG"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in synthetic_jpegs(max(args.images, args.cli_images)):
            (folder / name).write_bytes(data)
        cli_folder = folder / "cli"
        cli_folder.mkdir()
        for path in sorted(folder.glob("*.jpg"))[: args.cli_images]:
            (cli_folder / path.name).write_bytes(path.read_bytes())
        sys.path.insert(0, str(REPO))
        from utils.bundle import load_bundle
        from utils.classifier import Classifier

        classifier = Classifier(load_bundle())
        cli_throughput(classifier, cli_folder, 8)  # warm-up: graph tracing
        figures["cli_ips_batch1"] = cli_throughput(classifier, cli_folder, 1)
        figures["cli_ips_batch8"] = cli_throughput(classifier, cli_folder, 8)
        app_folder = folder / "app"
        app_folder.mkdir()
        for path in sorted(folder.glob("*.jpg"))[: args.images]:
            path.rename(app_folder / path.name)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", APP_MEMORY, str(app_folder)], cwd=REPO, text=True,
                                capture_output=True, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        figures["app_batch_seconds"] = time.perf_counter() - start
        memory = json.loads(result.stdout.strip().splitlines()[-1])
    figures["app_images"] = memory["rows"]
    figures["app_peak_rss_mb"] = memory["peak_rss"] / 2**20
    figures["app_rss_before_upload_mb"] = memory["rss_before_upload"] / 2**20
    figures["app_rss_after_mb"] = memory["rss_after"] / 2**20
    print(f"{figures['cores']} cores, synthetic {figures['image']}")
    print(f"CLI end to end, batch 1     {figures['cli_ips_batch1']:8.2f} images/s")
    print(f"CLI end to end, batch 8     {figures['cli_ips_batch8']:8.2f} images/s")
    print(f"app, {figures['app_images']} images in one upload: peak RSS {figures['app_peak_rss_mb']:.0f} MB "
          f"(before upload {figures['app_rss_before_upload_mb']:.0f} MB, after {figures['app_rss_after_mb']:.0f} MB), "
          f"{figures['app_batch_seconds']:.0f} s")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))
    return figures


if __name__ == "__main__":
    main()
