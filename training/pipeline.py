"""The one command from ../shared/data to the model bundle in model/.

Steps: check the committed split against the manifest -> fetch/convert the pretrained
weights -> train (resumable; a recipe of training/recipes/: training.finetune by default,
training.train with --recipe cached)
-> evaluate on the test split (two-stage presets fitted on validation) -> optional random-init
control -> pointing game and the distance guard's figures (training.trust) -> fit the
radiograph guard (training.radiograph_guard) -> the unseen-source checks (the knee check alone,
training.knee_check, and all three, knee_oai, wrist_check and hbfmid_check:
training.offsource_report; measured only) -> convert to LiteRT and compare with
Keras on the test split (training.litert) -> export model/ -> fit the review rules into the
bundle (input limits, shift score, presets re-derived; training.review.features and
training.review.rules, fitted on training and validation films only). Re-running resumes from the
caches and checkpoints.

Usage: python -m training.pipeline [--quick] [--control] [--bundle-dir model] [--version V] [training options]
       python -m training.pipeline --from-run artifacts/RUN [--bundle-dir DIR] [--version V]
           (every step after training, on a study's finished run)

Options it does not know (e.g. --epochs 4 --lr 2e-4) go to the training step's parser
(the recipe's own parser); every step is a function call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from training import evaluate, export, knee_check, litert, offsource_report, radiograph_guard, trust
from training.data import DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir, make_split, read_split, write_split
from training.recipes import all_recipes
from training.review import features as review_features
from training.review import rules as review_rules
from utils.core.bundle import DEFAULT_BUNDLE_DIR


def check_split(data_dir: Path, split_file: Path) -> None:
    """The split file is derived from the manifest; regenerate it and insist they agree."""
    rows, _ = make_split(data_dir)
    if not split_file.exists():
        write_split(rows, split_file)
        return
    expected = {(r["sha256"], r["split"]) for r in rows}
    committed = {(r["sha256"], r["split"]) for r in read_split(split_file)}
    if expected != committed:
        raise SystemExit(
            f"{split_file} does not match the split derived from {data_dir}/manifest.csv; "
            "regenerate it with python -m training.data"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--runs-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle-dir", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--init", choices=("nsfwjs", "random"), default="nsfwjs")
    recipes = all_recipes()
    parser.add_argument(
        "--recipe",
        choices=sorted(recipes),
        default="finetune",
        help="; ".join(f"{name}: {entry.help}" for name, entry in sorted(recipes.items())),
    )
    parser.add_argument("--control", action="store_true", help="also train the random-init control")
    parser.add_argument("--quick", action="store_true", help="tiny subset end to end, for tests")
    parser.add_argument(
        "--from-run",
        type=Path,
        help="skip training: evaluate, measure and export this finished run (a study's folder, say)",
    )
    parser.add_argument("--version", default="1.0.0", help="the bundle's version in metadata.json")
    return parser


def main(argv=None) -> None:
    args, train_options = build_parser().parse_known_args(argv)
    started = time.time()
    if not (args.data_dir / "manifest.csv").exists():
        raise SystemExit(f"No manifest at {args.data_dir}/manifest.csv; pass --data-dir.")
    check_split(args.data_dir, args.split)
    common = ["--data-dir", str(args.data_dir), "--split", str(args.split), "--cache-dir", str(args.cache_dir)] + (
        ["--quick"] if args.quick else []
    )
    suffix = ("_quick" if args.quick else "") + "".join(train_options).replace("--", "_")
    trainer = all_recipes()[args.recipe]
    prefix = trainer.run_prefix
    runs = [(args.init, args.from_run or args.runs_dir / f"{prefix}_{args.init}{suffix}")]
    if args.control and args.init != "random":
        runs.append(("random", args.runs_dir / f"{prefix}_random{suffix}"))
    for init, run_dir in runs:
        if run_dir != args.from_run:
            # The options the pipeline does not know are the training step's: its parser reads them.
            trainer.run(trainer.parse_args(common + train_options + ["--init", init, "--out", str(run_dir)]))
        print(evaluate.markdown_report(evaluate.evaluate(step_args(args, run_dir), run_dir / "eval")))
    main_run = runs[0][1]
    measure(args, main_run)
    command = "python -m training.pipeline " + " ".join(a for a in (argv or sys.argv[1:]))
    control = runs[1][1] if len(runs) > 1 else None
    export.export(main_run, args.bundle_dir, command.strip(), control, args.version)
    fit_review_rules(args, main_run)
    print(f"bundle written to {args.bundle_dir} in {time.time() - started:.0f} s")


def fit_review_rules(args: argparse.Namespace, main_run: Path) -> None:
    """The bundle's review rules from its own serving outputs (a few films per group when quick)."""
    features = main_run / "review_features"
    common = ["--bundle-dir", str(args.bundle_dir)]
    review_features.main(
        ["--out", str(features), "--data-dir", str(args.data_dir), "--split", str(args.split), *common]
        + (["--limit", "24"] if args.quick else [])
    )
    review_rules.main(["--features", str(features), "--out", str(main_run / "review_rules"), *common, "--write-bundle"])


def step_args(args: argparse.Namespace, run_dir: Path) -> argparse.Namespace:
    """What each per-run step reads (training.data.run_step_parser's options) for this run."""
    return argparse.Namespace(
        run=run_dir,
        data_dir=args.data_dir,
        split=args.split,
        cache_dir=args.cache_dir,
        quick=args.quick,
        verdict="two_stage",
    )


def measure(args: argparse.Namespace, main_run: Path) -> None:
    """The steps after training: the guards, the unseen-source checks and the LiteRT engine."""
    print(
        trust.markdown(trust.trust(main_run, main_run / "trust", args.data_dir, args.split, args.cache_dir, args.quick))
    )
    if not args.quick:  # the guard learns from chest_kermany films; the quick run has none to spare
        radiograph_guard.guard_run(main_run, args.data_dir, args.split, args.cache_dir)
    if (args.data_dir / knee_check.KNEE_FOLDER / "manifest.csv").exists():  # measured only, as the next step
        knee_check.knee_check_run(main_run, args.data_dir, 24 if args.quick else None)
    if (args.data_dir / "hbfmid_check" / "manifest.csv").exists():  # measured only: nothing is fitted on them
        offsource_report.report_run(main_run, args.data_dir, 12 if args.quick else None)
    litert.convert_and_compare(step_args(args, main_run))


if __name__ == "__main__":
    main()
