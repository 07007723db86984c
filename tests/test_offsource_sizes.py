"""The unseen-source checks' images are preprocessed at the size asked for (a study at another
input size than the bundle's gets films of that size, and its own cache)."""

from __future__ import annotations

import numpy as np

from fixtures.films import png_bytes, synthetic_radiograph
from training.offsource import check_images


def test_check_images_are_made_at_the_size_asked_for(tmp_path):
    folder = tmp_path / "data" / "wrist_check"
    folder.mkdir(parents=True)
    rows = ["path,label"]
    for seed in range(2):
        (folder / f"film{seed}.png").write_bytes(png_bytes((synthetic_radiograph(seed=seed) * 255).astype(np.uint8)))
        rows.append(f"film{seed}.png,healthy")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    for size in (128, 96):
        checks = check_images(tmp_path / "data", cache, size=size, folders=("wrist_check",))
        assert checks["wrist_check"]["images"].shape == (2, size, size)
    assert len(list(cache.glob("check_wrist_check_*.npz"))) == 2
