"""Small ensembles, measured: does averaging P(any fracture) over two or three trained models
lift the off-source AUROC enough (>= 0.02 over the best member) to pay for its cost?

For each run's model: P(any fracture) of the clean view on the FracAtlas validation films and on
the unseen-source checks (measured only, nothing is fitted on them), then the same figures for
the mean over all the runs, with the cost in ms per image (the sum of the members').

Usage: python -m training.studies.ensemble_study --runs artifacts/A artifacts/B [artifacts/C]
           [--knees 400] [--out artifacts/ensemble.json]
Each member's probabilities are kept in <run>/p_any_clean.npz, so a rerun only scores new runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from training.data import DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir
from training.offsource import offsource_aurocs
from training.studies.output import write_study
from training.studies.tta_study import p_any_fracture_by_view, study_films

ENSEMBLE = "ensemble (mean)"


def member_probabilities(run: Path, val: dict, checks: dict) -> dict:
    """{"val": P(any fracture) on validation, "checks": {folder: P}, "ms": per image} for the
    model in `run`, read from its cache file when that was made for the same films."""
    cache = run / "p_any_clean.npz"
    films = [val["images"]] + [c["images"] for c in checks.values()]
    sizes = [len(f) for f in films]
    if cache.exists():
        stored = np.load(cache)
        if stored["sizes"].tolist() == sizes and stored["folders"].tolist() == list(checks):
            return {
                "val": stored["val"],
                "checks": {name: stored[f"check_{name}"] for name in checks},
                "ms": float(stored["ms"]),
            }
    model = keras.saving.load_model(run / "model.keras", compile=False)
    # One pass over every film: a forward function is traced once, not once per set.
    p_all, ms = p_any_fracture_by_view(model, np.concatenate(films), views=("clean",))["clean"]
    p_val, *p_sets = np.split(p_all, np.cumsum(sizes)[:-1])
    p_checks = dict(zip(checks, p_sets))
    np.savez(
        cache,
        sizes=np.array(sizes),
        folders=np.array(list(checks)),
        val=p_val,
        ms=ms,
        **{f"check_{name}": p for name, p in p_checks.items()},
    )
    return {"val": p_val, "checks": p_checks, "ms": ms}


def mean_of(members: list[dict]) -> dict:
    """The ensemble as one more member: the mean P(any fracture), and the summed cost."""
    return {
        "val": np.mean([m["val"] for m in members], axis=0),
        "checks": {name: np.mean([m["checks"][name] for m in members], axis=0) for name in members[0]["checks"]},
        "ms": float(sum(m["ms"] for m in members)),
    }


def figures(member: dict, fractured: np.ndarray, labels: dict[str, list[str]]) -> dict:
    """Validation FracAtlas AUROC, the off-source AUROCs and the cost of one member."""
    return {
        "val_fracatlas_auroc": float(roc_auc_score(fractured, member["val"])),
        **offsource_aurocs(member["checks"], labels),
        "ms_per_image": member["ms"],
    }


def study(members: dict[str, dict], fractured: np.ndarray, labels: dict[str, list[str]]) -> dict:
    """{member name or ENSEMBLE: figures}, plus `gain`: the ensemble's off-source AUROC minus
    the best member's."""
    result = {name: figures(m, fractured, labels) for name, m in members.items()}
    result[ENSEMBLE] = figures(mean_of(list(members.values())), fractured, labels)
    best_member = max(result[name]["offsource_auroc"] for name in members)
    result["gain"] = result[ENSEMBLE]["offsource_auroc"] - best_member
    return result


def markdown(result: dict) -> str:
    lines = [
        "| model | val FracAtlas AUROC | off-source AUROC | vs knee_oai | vs wrist_check | ms per image |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        if name == "gain":
            continue
        lines.append(
            f"| {name} | {r['val_fracatlas_auroc']:.3f} | {r['offsource_auroc']:.3f} | "
            f"{r['auroc_vs_knee_oai']:.3f} | {r['auroc_vs_wrist_check']:.3f} | {r['ms_per_image']:.0f} |"
        )
    lines.append(f"\nensemble minus best member, off-source AUROC: {result['gain']:+.3f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders holding model.keras")
    parser.add_argument("--knees", type=int, default=400, help="knee films used (a fixed first subset)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/ensemble.json"))
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    val, checks = study_films(args)
    labels = {name: c["labels"] for name, c in checks.items()}
    members = {run.name: member_probabilities(run, val, checks) for run in args.runs}
    result = study(members, val["fractured"], labels)
    write_study(result, args.out, markdown(result))
    return result


if __name__ == "__main__":
    main()
