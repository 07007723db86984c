"""The group-wise split: no overlap group on two sides, label conflicts resolved, file in sync."""

from __future__ import annotations

from collections import defaultdict

from training.data import DEFAULT_SPLIT_FILE, drop_label_conflicts, make_split, read_split, split_groups


def synthetic_rows(n_groups=300, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        source = "fracatlas" if g % 3 else "bone_break"
        label = ("healthy", "fractured")[g % 2] if source == "fracatlas" else \
            ("fractured", "beyond_repair")[g % 2]
        for k in range(int(rng.integers(1, 4))):
            rows.append({"path": f"{g}_{k}.jpg", "source": source, "label": label,
                         "overlap_group": str(g), "sha256": f"{g:032x}{k:032x}"})
    return rows


def groups_by_split(rows, assignment):
    sides = defaultdict(set)
    for row in rows:
        sides[row["overlap_group"]].add(assignment[row["overlap_group"]])
    return sides


def test_no_group_on_two_sides_and_every_stratum_in_every_split():
    rows = synthetic_rows()
    assignment = split_groups(rows)
    assert all(len(s) == 1 for s in groups_by_split(rows, assignment).values())
    for source, label in {(r["source"], r["label"]) for r in rows}:
        splits = {assignment[r["overlap_group"]] for r in rows if (r["source"], r["label"]) == (source, label)}
        assert splits == {"train", "val", "test"}


def test_split_is_deterministic():
    rows = synthetic_rows()
    assert split_groups(rows) == split_groups(rows)
    assert split_groups(rows) != split_groups(rows, seed=1)


def test_conflicting_labels_keep_the_most_severe():
    rows = [{"overlap_group": "7", "label": "healthy", "source": "fracatlas", "path": "a"},
            {"overlap_group": "7", "label": "fractured", "source": "fracatlas", "path": "b"},
            {"overlap_group": "8", "label": "healthy", "source": "fracatlas", "path": "c"}]
    kept, dropped = drop_label_conflicts(rows)
    assert [r["path"] for r in kept] == ["b", "c"]
    assert [r["path"] for r in dropped] == ["a"]


def test_committed_split_keeps_groups_whole():
    rows = read_split(DEFAULT_SPLIT_FILE)
    sides = defaultdict(set)
    for row in rows:
        sides[row["overlap_group"]].add(row["split"])
    assert rows and all(len(s) == 1 for s in sides.values())
    assert len({r["sha256"] for r in rows if r["split"] == "test"} &
               {r["sha256"] for r in rows if r["split"] == "train"}) == 0


def test_committed_split_matches_the_manifest(shared_data):
    rows, _ = make_split(shared_data)
    assert {(r["sha256"], r["split"]) for r in rows} == \
        {(r["sha256"], r["split"]) for r in read_split(DEFAULT_SPLIT_FILE)}
