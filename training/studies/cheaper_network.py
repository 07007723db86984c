"""What would a cheaper network cost? A smaller input or an earlier cut, probed without retraining.

Usage: python -m training.studies.cheaper_network [--sizes 384 320] [--cuts mixed7 mixed6]
    [--knees 400] [--out artifacts/cheaper_network.json]

The shipped model's weights are rebuilt at each input size (InceptionV3 is convolutional up to
its pooling, so the same weights run at any size) and read at each cut (mixed4 to mixed7 all
give 768 channels). For every size and cut it reports:

- the float32 LiteRT engine's time per image for the network up to that cut (batch 1, median,
  on validation films);
- a logistic head on the cut's pooled features (healthy vs any fracture), fitted on FracAtlas's
  training films and its regularisation chosen on FracAtlas's validation films: its validation
  AUROC there and its off-source AUROC (hbfmid_check's fractures against the worse of the knees
  and the wrists). FracAtlas only, because Bone Break Classification's films are all fractures
  from one source: a head refit on both learns the source (validation AUROC 0.95, off-source
  AUROC near 0 in a first run);
- at the shipped cut, the shipped head itself at that size (no refit).

The head-only refit compares the sizes and cuts with each other; it does not say what a full
fine-tune would reach (on films from elsewhere it ranks worse than the shipped head). Films are
preprocessed at each size by the serving preprocessing. Nothing is fitted on a check set.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import keras
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.data import DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir, read_split
from training.features import build_image_cache
from training.model import DEFAULT_CUT, build_two_stage_classifier
from training.offsource import check_images, offsource_aurocs
from training.release.equivalence import median_ms
from training.studies.output import write_study
from utils.core.bundle import DEFAULT_BUNDLE_DIR, load_bundle
from utils.core.engines import default_threads
from utils.core.inference import calibrated_probabilities, to_model_input

REGULARISATION = (0.001, 0.01, 0.1, 1.0)  # inverse strengths tried, chosen on validation


def resized_model(bundle_model: keras.Model, size: int) -> keras.Model:
    """The shipped model at another input size, with its weights."""
    model = build_two_stage_classifier(None, size=size)
    model.set_weights(bundle_model.get_weights())
    return model


def probe_outputs(model: keras.Model, cuts: list[str]) -> keras.Model:
    """The shipped logits and each cut's globally pooled features."""
    outputs = {"logits": model.output}
    for cut in cuts:
        outputs[cut] = keras.layers.GlobalAveragePooling2D(name=f"probe_pool_{cut}")(model.get_layer(cut).output)
    return keras.Model(model.input, outputs)


def extract(probe: keras.Model, images: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for i in range(0, len(images), batch):
        for key, value in probe(to_model_input(images[i : i + batch, ..., None]), training=False).items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(value) for key, value in parts.items()}


def trunk_ms(model: keras.Model, cut: str, films: np.ndarray) -> float:
    """Median ms per image (batch 1, on (N, S, S) uint8 films) of the float32 LiteRT network up
    to the cut's pooled features."""
    import tensorflow as tf  # noqa: PLC0415  (the conversion only)

    trunk = keras.Model(model.input, keras.layers.GlobalAveragePooling2D()(model.get_layer(cut).output))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trunk.tflite"
        path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(trunk).convert())
        # The serving engine's interpreter and threads; the trunk has none of the serving outputs.
        run = Interpreter(model_path=str(path), num_threads=default_threads()).get_signature_runner()
        name = next(iter(run.get_input_details()))
        return median_ms(lambda x: run(**{name: x}), films, batch=1)


def fit_head(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray):
    """A logistic head (any fracture) on pooled features, its strength chosen on validation."""
    best = None
    for c in REGULARISATION:
        head = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000))
        head.fit(train, train_labels)
        auroc = roc_auc_score(val_labels, head.predict_proba(val)[:, 1])
        if best is None or auroc > best[0]:
            best = (auroc, c, head)
    return best


def study_size(bundle, size: int, cuts: list[str], films: dict, checks: dict) -> list[dict]:
    """Every cut's figures at one input size. films and checks: {name: {"images", "labels"}} at
    that size (films: the training and validation films, labels True for any fracture)."""
    probe = probe_outputs(resized_model(bundle.model, size), cuts)
    labels = {name: film["labels"] for name, film in films.items()}
    images = {name: film["images"] for name, film in {**films, **checks}.items()}
    features = {name: extract(probe, batch) for name, batch in images.items()}
    check_labels = {name: check["labels"] for name, check in checks.items()}
    rows = []
    for cut in cuts:
        auroc, c, head = fit_head(features["train"][cut], labels["train"], features["val"][cut], labels["val"])
        scores = {name: head.predict_proba(features[name][cut])[:, 1] for name in checks}
        row = {
            "size": size,
            "cut": cut,
            "ms_batch_1": trunk_ms(probe, cut, films["val"]["images"]),
            "refit_head": {"C": c, "val_auroc": float(auroc), "offsource_auroc": offsource_auroc(scores, check_labels)},
        }
        if cut == DEFAULT_CUT:
            p_any = {name: 1.0 - calibrated_probabilities(f["logits"], 1.0)[:, 0] for name, f in features.items()}
            row["shipped_head"] = {
                "val_auroc": float(roc_auc_score(labels["val"], p_any["val"])),
                "offsource_auroc": offsource_auroc({name: p_any[name] for name in checks}, check_labels),
            }
        rows.append(row)
        print(row, flush=True)
    return rows


def offsource_auroc(scores: dict[str, np.ndarray], labels: dict[str, list]) -> float:
    return offsource_aurocs(scores, labels)["offsource_auroc"]


def markdown(rows: list[dict]) -> str:
    lines = [
        "| input | cut | ms/image (float32, batch 1) | refit head: FracAtlas validation AUROC | refit head: off-source "
        "AUROC | shipped head: FracAtlas validation AUROC | shipped head: off-source AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shipped = r.get("shipped_head")
        lines.append(
            f"| {r['size']} px | {r['cut']} | {r['ms_batch_1']:.1f} | {r['refit_head']['val_auroc']:.4f} | "
            f"{r['refit_head']['offsource_auroc']:.4f} | "
            + (f"{shipped['val_auroc']:.4f} | {shipped['offsource_auroc']:.4f} |" if shipped else "- | - |")
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-dir", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 320])
    parser.add_argument("--cuts", nargs="+", default=[DEFAULT_CUT, "mixed6"])
    parser.add_argument("--knees", type=int, default=400, help="knee films used (a fixed first subset)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/cheaper_network.json"))
    args = parser.parse_args(argv)
    bundle = load_bundle(args.bundle_dir, load_keras=True)
    rows = read_split(args.split)
    chosen = {split: [r for r in rows if r["split"] == split] for split in ("train", "val")}
    fracatlas = {split: np.array([r["source"] == "fracatlas" for r in chosen[split]]) for split in chosen}
    results = []
    for size in args.sizes:
        films = {  # the split's whole cache (already built for other studies), then FracAtlas's rows
            split: {
                "images": build_image_cache(chosen[split], args.data_dir, args.cache_dir, size=size)[fracatlas[split]],
                "labels": np.array([r["label"] != "healthy" for r in chosen[split]])[fracatlas[split]],
            }
            for split in chosen
        }
        checks = check_images(args.data_dir, args.cache_dir, limit_per_source=args.knees, size=size)
        results += study_size(bundle, size, args.cuts, films, checks)
    write_study(results, args.out, markdown(results))
    return results


if __name__ == "__main__":
    main()
