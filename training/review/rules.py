"""When must the model not answer? Fit the review rules and measure each lever per source.

Reads the serving-path outputs that `training.review.features` saved, then:
1. input limits: the shorter side and the elongation of the training and validation films;
2. the shift score: k-NN cosine distance to the training films and their augmented views, its
   threshold a quantile of the validation films' scores;
3. disagreement: the mirror view's P(any fracture) against the film's own, on the logit scale,
   its threshold the same quantile of validation films;
4. the balanced preset re-derived as a risk-coverage point: the narrowest band around the
   fracture threshold at which confident FracAtlas validation verdicts, after every other
   review reason, are right at least 90 % of the time.
Every fit uses training or validation films only. The unseen-source checks (knee_oai,
wrist_check, hbfmid_check) and the chest films are only reported: coverage (the share with a
class verdict) and confident-wrong (the share with a wrong class verdict), per source, for each
lever added in turn, with the risk-coverage curves.

Usage: python -m training.review.rules --features artifacts/review_features
           --out artifacts/review_rules [--bundle-dir model] [--write-bundle]
Writes <out>/review_rules.json, <out>/review_rules.md and <out>/risk_coverage.png; with
--write-bundle, the shift score file, the input limits and the re-derived presets into the bundle.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from training.calibrate import BAND_GRID, TARGET_COVERED_ACCURACY
from utils.core.bundle import load_bundle, sha256_of
from utils.core.classifier import Prediction, feature_reasons, film_reasons
from utils.core.guard import NOT_RADIOGRAPH_MESSAGE, FeatureGuard, RadiographGuard
from utils.core.inference import CLASSES, calibrated_probabilities, logit
from utils.core.intended_use import InputLimits
from utils.core.review import decide_verdict
from utils.core.shift import ShiftScore, unit_rows

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

K_NEIGHBOURS = 10
# 5 % of validation films lie above each threshold by construction: the price, on films like the
# training films, of saying "needs review" on films unlike them.
VAL_QUANTILE = 0.95
SIZE_PERCENTILE = 1.0  # the input limits leave out the smallest / most elongated 1 % of films
REPORTED = ("val_fracatlas", "test_fracatlas", "knee_oai", "wrist_check", "hbfmid_fractures", "chest_kermany")
LEVERS = (
    "2.1.0 as shipped",
    "+ input adequacy",
    "+ shift score",
    "+ flip disagreement (not shipped)",
    "+ presets re-derived (shipped)",
)
VARIANTS = (
    "variant: input limit from every film, not only clinical ones",
    "variant: shift score at the 99 % validation quantile",
)


@dataclass
class Films:
    """One group's saved outputs, with the probabilities under the bundle's temperature."""

    arrays: dict[str, np.ndarray]
    probs: np.ndarray
    flip_probs: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def subset(self, keep: np.ndarray) -> Films:
        return Films({k: v[keep] for k, v in self.arrays.items()}, self.probs[keep], self.flip_probs[keep])


def load_films(folder: Path, name: str, temperature: float) -> Films:
    arrays = dict(np.load(folder / f"{name}.npz"))
    return Films(
        arrays,
        calibrated_probabilities(arrays["logits"], temperature),
        calibrated_probabilities(arrays["flip_logits"], temperature),
    )


def reported_groups(folder: Path, temperature: float) -> dict[str, Films]:
    """The groups every lever is reported on: FracAtlas validation and test, and the checks
    (those whose outputs were saved: a data folder may lack some checks)."""
    groups = {}
    for name, saved, keep in (
        ("val_fracatlas", "val", lambda f: f["source"] == "fracatlas"),
        ("test_fracatlas", "test", lambda f: f["source"] == "fracatlas"),
        ("knee_oai", "knee_oai", None),
        ("wrist_check", "wrist_check", None),
        ("hbfmid_fractures", "hbfmid_check", lambda f: f["label"] != "healthy"),
        ("chest_kermany", "chest_kermany", None),
    ):
        if (folder / f"{saved}.npz").exists():
            films = load_films(folder, saved, temperature)
            groups[name] = films.subset(keep(films)) if keep else films
    return groups


def fit_input_limits(train: Films, val: Films, clinical_only: bool = True) -> InputLimits:
    """The smallest film: the 1st percentile of the shorter side of the clinical (FracAtlas)
    training and validation films, the only films on which a healthy verdict was ever trained
    and validated (the Bone Break web figures are all fractures, so no small film ever showed the
    model's false alarms). The most elongated: the 99th percentile over every training and
    validation film (letterboxing keeps any shape the model was trained on).
    clinical_only False: the shorter side over every film too (a variant the study reports)."""
    height = np.r_[train["height"], val["height"]].astype(float)
    width = np.r_[train["width"], val["width"]].astype(float)
    clinical = np.r_[train["source"], val["source"]] == "fracatlas"
    short, long = np.minimum(height, width), np.maximum(height, width)
    sized = short[clinical] if clinical_only else short
    return InputLimits(
        min_short_side=int(np.floor(np.percentile(sized, SIZE_PERCENTILE))),
        max_aspect_ratio=float(np.ceil(np.percentile(long / short, 100 - SIZE_PERCENTILE) * 10) / 10),
    )


def fit_shift_score(train: Films, val: Films, k: int = K_NEIGHBOURS, quantile: float = VAL_QUANTILE) -> ShiftScore:
    """The bank: every training film and one augmented view of each; the threshold: the
    quantile of the validation films' scores."""
    bank = unit_rows(np.r_[train["features"], train["aug_features"]].astype(np.float32)).astype(np.float16)
    unfitted = ShiftScore(bank.astype(np.float32), k, float("inf"))
    threshold = float(np.quantile(unfitted.score(val["features"].astype(np.float32)), quantile))
    return ShiftScore(bank.astype(np.float32), k, threshold)


def p_any(probs: np.ndarray) -> np.ndarray:
    return probs[:, 1] + probs[:, 2]


def flip_disagreement(films: Films) -> np.ndarray:
    """|logit P(any fracture) - logit P(any fracture) of the mirror view|."""
    own = np.array([logit(p) for p in p_any(films.probs)])
    mirror = np.array([logit(p) for p in p_any(films.flip_probs)])
    return np.abs(own - mirror)


@dataclass(frozen=True)
class Rules:
    """The review rules of one lever setting (None: that rule is off)."""

    guard: RadiographGuard | FeatureGuard | None
    limits: InputLimits | None = None
    shift: ShiftScore | None = None
    flip_threshold: float | None = None


def as_prediction(films: Films, i: int, guard_message: str | None, shift_score: float | None) -> Prediction:
    """Film i's saved facts as the serving path holds them, so its review reasons come from the
    same code (utils.core.classifier.film_reasons and feature_reasons)."""
    screened = NOT_RADIOGRAPH_MESSAGE if films["screened"][i] else None
    return Prediction(
        name=str(films["path"][i]),
        incomplete="saved as incomplete" if films["incomplete"][i] else None,
        not_xray=screened or guard_message,
        image_size=(int(films["height"][i]), int(films["width"][i])),
        shift_score=shift_score,
    )


def other_reasons(films: Films, rules: Rules) -> list[list[str]]:
    """Per film, the review reasons that do not come from the probabilities, as serving gives
    them; with a flip threshold, also the mirror view's disagreement (a study-only rule)."""
    features = films["features"].astype(np.float32)
    guard = rules.guard
    flagged = guard.is_outlier(features) if guard is not None else np.zeros(len(films), bool)
    scores = rules.shift.score(features) if rules.shift is not None else [None] * len(films)
    unsure = flip_disagreement(films) > rules.flip_threshold if rules.flip_threshold is not None else None
    reasons = []
    for i in range(len(films)):
        film = as_prediction(films, i, guard.message if guard is not None and flagged[i] else None, scores[i])
        found, _ = film_reasons(film, rules.limits)
        found += feature_reasons(film, rules.shift)
        if unsure is not None and unsure[i]:
            found.append("unlike_training_films")
        reasons.append(found)
    return reasons


def outcomes(films: Films, preset: dict[str, Any], reasons: list[list[str]]) -> dict[str, np.ndarray]:
    """Per film: covered (a class verdict), called a fracture, truly a fracture."""
    covered, called = np.zeros(len(films), bool), np.zeros(len(films), bool)
    for i, row in enumerate(films.probs):
        verdict = decide_verdict(dict(zip(CLASSES, row)), preset, reasons[i])
        covered[i] = verdict.kind in CLASSES
        called[i] = verdict.label != "healthy"
    return {"covered": covered, "called": called, "truth": films["label"] != "healthy"}


def shares(result: dict[str, np.ndarray]) -> dict[str, float]:
    covered, wrong = result["covered"], result["called"] != result["truth"]
    n = max(len(covered), 1)
    return {
        "n": len(covered),
        "coverage": float(covered.sum() / n),
        "confident_wrong": float((covered & wrong).sum() / n),
        "accuracy_on_covered": float(1 - wrong[covered].mean()) if covered.any() else float("nan"),
    }


def rederive_band(val: Films, preset: dict[str, Any], reasons: list[list[str]]) -> dict[str, Any]:
    """The narrowest band around the fracture threshold at which the confident FracAtlas
    validation verdicts (after every other review reason) are right TARGET_COVERED_ACCURACY of the
    time: the widest coverage at that accuracy."""
    for band in BAND_GRID:
        figures = shares(outcomes(val, {**preset, "fracture_band": float(band)}, reasons))
        if figures["coverage"] > 0 and figures["accuracy_on_covered"] >= TARGET_COVERED_ACCURACY:
            break
    final = shares(outcomes(val, {**preset, "fracture_band": float(band)}, reasons))
    return {
        **preset,
        "fracture_band": float(band),
        "val_coverage": final["coverage"],
        "val_covered_accuracy": final["accuracy_on_covered"],
        "band_fitted_on": "FracAtlas validation films, after the input, shift-score and guard review reasons",
    }


def separation(films: Films, preset: dict[str, Any], score: np.ndarray, reasons: list[list[str]]) -> float:
    """AUROC of a score for the wrong confident verdicts against the right ones (0.5: no use)."""
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415  (only this figure needs it)

    result = outcomes(films, preset, reasons)
    wrong = (result["called"] != result["truth"])[result["covered"]]
    if wrong.all() or not wrong.any():
        return float("nan")
    return float(roc_auc_score(wrong, score[result["covered"]]))


def lever_rules(guard, limits: InputLimits, shift: ShiftScore, flip_threshold: float) -> dict[str, Rules]:
    """Each lever added to the ones before it."""
    return {
        LEVERS[0]: Rules(guard),
        LEVERS[1]: Rules(guard, limits),
        LEVERS[2]: Rules(guard, limits, shift),
        LEVERS[3]: Rules(guard, limits, shift, flip_threshold),
    }


def lever_table(groups: dict[str, Films], presets: dict[str, dict], rules: dict[str, Rules]) -> dict[str, dict]:
    """{lever: {source: shares}} under the balanced preset (the last lever: the re-derived one)."""
    table = {}
    for lever, rule in rules.items():
        preset = presets["shipped"] if lever in LEVERS[:4] else presets["rederived"]
        table[lever] = {
            name: shares(outcomes(films, preset, other_reasons(films, rule))) for name, films in groups.items()
        }
    return table


def risk_coverage(groups: dict[str, Films], preset: dict[str, Any], rule: Rules) -> dict[str, list[list[float]]]:
    """Per source, (coverage, confident-wrong) as the band around the fracture threshold widens."""
    curves: dict[str, list[list[float]]] = {}
    for name, films in groups.items():
        reasons = other_reasons(films, rule)
        points = []
        for band in BAND_GRID[::4]:
            figures = shares(outcomes(films, {**preset, "fracture_band": float(band)}, reasons))
            points.append([float(band), figures["coverage"], figures["confident_wrong"]])
        curves[name] = points
    return curves


def plot_curves(curves: dict[str, list[list[float]]], chosen_band: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, points in curves.items():
        array = np.array(points)
        ax.plot(array[:, 1], array[:, 2], marker=".", label=name)
    ax.set_xlabel("coverage (share of films with a class verdict)")
    ax.set_ylabel("confident and wrong (share of all films)")
    ax.set_title(f"Risk-coverage per source as the band widens (shipped band {chosen_band:.2f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(table: dict[str, dict]) -> str:
    lines = [
        "| lever | " + " | ".join(REPORTED) + " |",
        "|---|" + "---|" * len(REPORTED),
    ]
    for lever, block in table.items():
        cells = [
            f"{block[s]['coverage']:.1%} / {block[s]['confident_wrong']:.1%}" if s in block else "—" for s in REPORTED
        ]
        lines.append(f"| {lever} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Each cell: coverage / confident and wrong, balanced preset, films with no age or body part given.")
    return "\n".join(lines) + "\n"


def fit_rules(folder: Path, bundle) -> dict[str, Any]:
    """Every rule fitted on training and validation films only."""
    train, val = load_films(folder, "train", bundle.temperature), load_films(folder, "val", bundle.temperature)
    return {
        "limits": fit_input_limits(train, val),
        "shift": fit_shift_score(train, val),
        "flip_threshold": float(np.quantile(flip_disagreement(val), VAL_QUANTILE)),
        "variant_limits": fit_input_limits(train, val, clinical_only=False),
        "variant_shift": fit_shift_score(train, val, quantile=0.99),
    }


def fit_everything(folder: Path, bundle) -> dict[str, Any]:
    """The rules, the presets re-derived under them, and every figure the study reports."""
    fitted = fit_rules(folder, bundle)
    groups = reported_groups(folder, bundle.temperature)
    rules = lever_rules(bundle.guard, fitted["limits"], fitted["shift"], fitted["flip_threshold"])
    rules[LEVERS[4]] = rules[LEVERS[2]]
    rules[VARIANTS[0]] = Rules(bundle.guard, fitted["variant_limits"], fitted["shift"])
    rules[VARIANTS[1]] = Rules(bundle.guard, fitted["limits"], fitted["variant_shift"])
    val = groups["val_fracatlas"]
    val_reasons = other_reasons(val, rules[LEVERS[4]])
    rederived = rederive_band(val, bundle.preset("balanced"), val_reasons)
    sensitive = with_band(val, bundle.preset("fracture_sensitive"), rederived["fracture_band"], val_reasons)
    plain = other_reasons(val, rules[LEVERS[1]])
    shipped = bundle.preset("balanced")
    return {
        **fitted,
        "test_split_three_class": {
            "shipped": whole_test_split(folder, bundle, bundle.preset("balanced"), rules[LEVERS[0]]),
            "final": whole_test_split(folder, bundle, rederived, rules[LEVERS[4]]),
        },
        "rederived": rederived,
        "sensitive": sensitive,
        "table": lever_table(groups, {"shipped": shipped, "rederived": rederived}, rules),
        "curves": risk_coverage(groups, rederived, rules[LEVERS[4]]),
        "separation_on_validation": {
            "shift_score": separation(val, shipped, fitted["shift"].score(val["features"].astype(np.float32)), plain),
            "flip_disagreement": separation(val, shipped, flip_disagreement(val), plain),
        },
    }


def with_band(val: Films, preset: dict[str, Any], band: float, reasons: list[list[str]]) -> dict[str, Any]:
    """A preset given the balanced preset's band (a low threshold asks for no band of its own:
    its confident healthy calls are few and its fracture calls accept false alarms on purpose)."""
    figures = shares(outcomes(val, {**preset, "fracture_band": band}, reasons))
    return {
        **preset,
        "fracture_band": band,
        "val_coverage": figures["coverage"],
        "val_covered_accuracy": figures["accuracy_on_covered"],
    }


def whole_test_split(folder: Path, bundle, preset: dict[str, Any], rule: Rules) -> dict[str, float]:
    """The whole test split (FracAtlas and Bone Break), three-class: coverage and the share of
    covered films whose class is right, as the product's test figure has been reported."""
    films = load_films(folder, "test", bundle.temperature)
    reasons = other_reasons(films, rule)
    kinds = [decide_verdict(dict(zip(CLASSES, row)), preset, reasons[i]) for i, row in enumerate(films.probs)]
    covered = np.array([v.kind in CLASSES for v in kinds])
    right = np.array([v.label == label for v, label in zip(kinds, films["label"])])
    return {"n": len(films), "coverage": float(covered.mean()), "accuracy_on_covered": float(right[covered].mean())}


def summary_of(fitted: dict[str, Any]) -> dict[str, Any]:
    shift = fitted["shift"]
    return {
        "input_limits": vars(fitted["limits"]),
        "variant_input_limits": vars(fitted["variant_limits"]),
        "variant_shift_threshold": fitted["variant_shift"].threshold,
        "shift_score": {"k": shift.k, "threshold": shift.threshold, "bank": len(shift.bank)},
        "flip_threshold": fitted["flip_threshold"],
        "separation_on_validation": fitted["separation_on_validation"],
        "test_split_three_class": fitted["test_split_three_class"],
        "rederived_balanced": fitted["rederived"],
        "fracture_sensitive": fitted["sensitive"],
        "table": fitted["table"],
        "curves": fitted["curves"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("artifacts/review_features"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/review_rules"))
    parser.add_argument("--bundle-dir", type=Path, default=None, help="the bundle whose outputs were saved")
    parser.add_argument("--write-bundle", action="store_true", help="write the fitted rules into that bundle")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(args.bundle_dir, load_keras=False)
    fitted = fit_everything(args.features, bundle)
    plot_curves(fitted["curves"], fitted["rederived"]["fracture_band"], args.out / "risk_coverage.png")
    summary = summary_of(fitted)
    (args.out / "review_rules.json").write_text(json.dumps(summary, indent=1))
    (args.out / "review_rules.md").write_text(markdown(fitted["table"]) + "\n" + card_section(fitted))
    print(markdown(fitted["table"]))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("table", "curves")}, indent=1))
    if args.write_bundle:
        write_bundle(bundle.directory, fitted)
        write_card_section(bundle.directory / "MODEL_CARD.md", card_section(fitted))
        plot_curves(
            fitted["curves"], fitted["rederived"]["fracture_band"], bundle.directory / "eval" / "risk_coverage.png"
        )
    return summary


SHIFT_FILE = "shift_score.npz"


def write_bundle(directory: Path, fitted: dict[str, Any]) -> None:
    """The shift score's bank beside the model, and its threshold, the input limits and the
    re-derived presets in metadata.json (each with what it was fitted on)."""
    path = directory / "metadata.json"
    metadata = json.loads(path.read_text())
    fitted["shift"].save(directory / SHIFT_FILE)
    limits = fitted["limits"]
    metadata["input_limits"] = {
        "min_short_side": limits.min_short_side,
        "max_aspect_ratio": limits.max_aspect_ratio,
        "fitted_on": f"the shorter side: its {SIZE_PERCENTILE:g}st percentile over the clinical (FracAtlas) "
        "training and validation films, the only films a healthy verdict was validated on; the elongation: "
        f"its {100 - SIZE_PERCENTILE:g}th percentile over every training and validation film",
    }
    metadata["shift_score"] = {
        "file": SHIFT_FILE,
        "sha256": sha256_of(directory / SHIFT_FILE),
        "kind": "cosine distance to the k-th nearest training feature (penultimate layer)",
        "k": fitted["shift"].k,
        "threshold": fitted["shift"].threshold,
        "bank": f"{len(fitted['shift'].bank)} rows: every training film and one augmented view of each",
        "threshold_fitted_on": f"validation films: their {VAL_QUANTILE:.0%} quantile",
    }
    metadata["presets"]["balanced"] = fitted["rederived"]
    metadata["presets"]["fracture_sensitive"] = fitted["sensitive"]
    path.write_text(json.dumps(metadata, indent=1) + "\n")


CARD_HEADING = "## Where it answers and where it does not"
SOURCE_NAMES = {
    "val_fracatlas": "FracAtlas validation (fitted on)",
    "test_fracatlas": "FracAtlas test",
    "knee_oai": "knee_oai (healthy knees, another continent)",
    "wrist_check": "wrist_check (healthy wrists, mostly children)",
    "hbfmid_fractures": "hbfmid_check fractures (another hospital)",
    "chest_kermany": "chest films (another body part; 300 drawn)",
}


def percent(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.1%}"


def reasons_table(fitted: dict[str, Any]) -> list[str]:
    """The review reasons, when each applies and what it was fitted on, as markdown rows."""
    limits, shift, preset = fitted["limits"], fitted["shift"], fitted["rederived"]
    return [
        "| reason | when | fitted on |",
        "|---|---|---|",
        "| `child` | the DICOM header's age (PatientAge, or PatientBirthDate with StudyDate or "
        "AcquisitionDate) is under 18; without one, the user said *child* (app: Patient; CLI: "
        "`--population child`) | (the intended use) |",
        "| `body_part` | the DICOM header's BodyPartExamined names no limb, shoulder or hip (CHEST, SKULL, "
        "SPINE, ABDOMEN, ...) | (the intended use) |",
        f"| `image_too_small` | the shorter side is under {limits.min_short_side} px, or the film is more "
        f"elongated than {limits.max_aspect_ratio:.1f} : 1 | the shorter side: the 1st percentile of the "
        "clinical (FracAtlas) training and validation films, the only films a healthy verdict was validated "
        "on; the elongation: the 99th percentile of every training and validation film |",
        f"| `unlike_training_films` | the shift score (cosine distance to the {shift.k}th nearest of "
        f"{len(shift.bank):,} training films and augmented views, on the pooled features) is above "
        f"{shift.threshold:.4f} | its {VAL_QUANTILE:.0%} quantile on validation films |",
        f"| `near_threshold` | P(any fracture) within {preset['fracture_band']:.2f} (logit) of the fracture "
        "threshold | the narrowest band at which confident FracAtlas validation verdicts are right 90 % of "
        "the time, after every other reason |",
        f"| `severity_margin` | P(beyond repair \\| fracture) within {preset['severity_margin']:.2f} (logit) "
        "of the severity threshold | validation fractures |",
        "| `incomplete_image` | the file is cut short (the decoder filled in the rest) | (always) |",
        "| `not_a_radiograph` | the colour, flat-image or radiograph guard fired | see below |",
    ]


def card_section(fitted: dict[str, Any]) -> str:
    """The model card's section on the intended use, the review rules and what they cost."""
    final = fitted["table"][LEVERS[4]]
    lines = [
        CARD_HEADING,
        "**Intended use.** Adults' limb radiographs: the upper limb from shoulder to finger, the hip and "
        "pelvis, and the lower limb from thigh to toe (FracAtlas; web figures of limb fractures). The model "
        "was not validated on children, on other body parts, or on films unlike its training films. There it "
        "does not answer: the verdict is **needs review**, with the reason in words and the probabilities "
        "still shown. The reasons (`utils.core.review`), and where each comes from:",
        "",
        *reasons_table(fitted),
        "",
        "**Coverage and confident-wrong per source** (balanced preset, serving path, films with no age or "
        "body part given; `python -m training.review.rules`). Coverage is the share of films with a "
        "class verdict; confident-wrong the share with a wrong one. Nothing was fitted on the unseen-source "
        "checks or the chest films.",
        "",
        "| source | n | coverage | confident and wrong | accuracy on covered |",
        "|---|---|---|---|---|",
    ]
    for name in [n for n in REPORTED if n in final]:
        row = final[name]
        lines.append(
            f"| {SOURCE_NAMES[name]} | {row['n']} | {row['coverage']:.1%} | {row['confident_wrong']:.1%} | "
            f"{percent(row['accuracy_on_covered'])} |"
        )
    whole = fitted["test_split_three_class"]
    separation = fitted["separation_on_validation"]
    lines += [
        "",
        f"The whole test split ({whole['final']['n']} films, FracAtlas and Bone Break, three classes): coverage "
        f"{whole['final']['coverage']:.1%}, right on covered {whole['final']['accuracy_on_covered']:.1%} "
        f"(as 2.1.0 shipped: {whole['shipped']['coverage']:.1%} and {whole['shipped']['accuracy_on_covered']:.1%}); "
        "the small Bone Break web figures are now too small for a verdict.",
        "",
        "The shift score costs about 0.4 ms per film. On validation it tells the wrong confident verdicts "
        f"from the right ones with an AUROC of {separation['shift_score']:.2f}; the mirror view's disagreement "
        f"does better ({separation['flip_disagreement']:.2f}) but costs a second forward pass per film (about "
        "80 ms on 2 cores), and off-source it removed no confident wrong verdict that the rules above had not "
        "already removed (the table below): it is not shipped.",
        "",
        "Each lever added in turn (coverage / confident and wrong):",
        "",
        markdown(fitted["table"]).rstrip(),
        "",
        "Risk-coverage per source, as the band around the fracture threshold widens: "
        "[risk_coverage.png](eval/risk_coverage.png).",
        "",
    ]
    return "\n".join(lines)


def write_card_section(card: Path, section: str) -> None:
    """Put the section before "## Films from other hospitals", replacing an earlier one."""
    text = card.read_text()
    if CARD_HEADING in text:
        start = text.index(CARD_HEADING)
        end = text.find("\n## ", start + len(CARD_HEADING))
        text = text[:start] + text[end + 1 if end >= 0 else len(text) :]
    anchor = text.find("## Films from other hospitals")
    anchor = anchor if anchor >= 0 else len(text)
    card.write_text(text[:anchor] + section + "\n" + text[anchor:])


if __name__ == "__main__":
    main()
