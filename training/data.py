"""Labels, cleaning and the group-wise train/validation/test split of ../shared/data.

Usage: python -m training.data [--data-dir DIR] [--out training/split.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

CLASSES = ("healthy", "fractured", "beyond_repair")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_SEED = 20261125
DEFAULT_SPLIT_FILE = Path(__file__).with_name("split.csv")
SPLIT_COLUMNS = ("path", "sha256", "source", "label", "overlap_group", "split")


def default_data_dir() -> Path:
    return Path(os.environ.get("BONE_XRAY_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def default_cache_dir() -> Path:
    root = os.environ.get("BONE_XRAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bone-xray"
    )
    return Path(root)


def label_of(row: dict) -> str:
    hint = row["label_hint"]
    if row["source"] == "fracatlas":
        return "healthy" if hint == "non_fractured" else "fractured"
    return "beyond_repair" if hint == "Comminuted fracture" else "fractured"


def read_manifest(data_dir: Path) -> list[dict]:
    with open(data_dir / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["label"] = label_of(row)
    return rows


def drop_label_conflicts(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Within an overlap group holding several labels, keep only the most severe label.

    These are the same picture filed twice (e.g. a FracAtlas copy under Non_fractured whose
    Fractured twin has the box, or a Bone Break crop under two type folders).
    """
    severity = {name: i for i, name in enumerate(CLASSES)}
    worst: defaultdict[str, int] = defaultdict(int)
    for row in rows:
        worst[row["overlap_group"]] = max(worst[row["overlap_group"]], severity[row["label"]])
    kept = [r for r in rows if severity[r["label"]] == worst[r["overlap_group"]]]
    dropped = [r for r in rows if severity[r["label"]] != worst[r["overlap_group"]]]
    return kept, dropped


def split_groups(rows: list[dict], seed: int = SPLIT_SEED, fractions=SPLIT_FRACTIONS) -> dict[str, str]:
    """Assign each overlap group to a split, stratified by (source, label), fixed seed."""
    strata: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        strata[(row["source"], row["label"])].add(row["overlap_group"])
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for key in sorted(strata):
        groups = sorted(strata[key] - assignment.keys(), key=int)
        rng.shuffle(groups)
        n_train = int(round(fractions[0] * len(groups)))
        n_val = int(round(fractions[1] * len(groups)))
        for i, group in enumerate(groups):
            assignment[group] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return assignment


def make_split(data_dir: Path) -> tuple[list[dict], list[dict]]:
    rows, dropped = drop_label_conflicts(read_manifest(data_dir))
    assignment = split_groups(rows)
    for row in rows:
        row["split"] = assignment[row["overlap_group"]]
    return rows, dropped


def write_split(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SPLIT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["path"]))


def quick_subset(rows: list[dict], per_class_split: int = 6, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    picked = []
    for split in ("train", "val", "test"):
        for label in CLASSES:
            pool = [r for r in rows if r["split"] == split and r["label"] == label]
            take = rng.permutation(len(pool))[:per_class_split]
            picked += [pool[i] for i in sorted(take)]
    return picked


def read_split(path: Path = DEFAULT_SPLIT_FILE) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=DEFAULT_SPLIT_FILE)
    args = parser.parse_args(argv)
    rows, dropped = make_split(args.data_dir)
    write_split(rows, args.out)
    counts = Counter((r["split"], r["label"]) for r in rows)
    for split in SPLITS:
        print(split, {c: counts[(split, c)] for c in CLASSES})
    print(f"dropped {len(dropped)} images whose overlap group carries a more severe label")


if __name__ == "__main__":
    main()


def run_logger(out_dir: Path):
    """log(message): timestamped to stdout and appended to <out_dir>/train.log (runs resume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / "train.log", "a")

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    return log


def run_step_parser(description: str, out: bool = True):
    """The options every per-run step (evaluate, trust, litert) takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=Path, required=True)
    if out:
        parser.add_argument("--out", type=Path)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--quick", action="store_true")
    return parser
