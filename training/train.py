"""Fine-tune the InceptionV3 classifier on cached trunk features; resumable from checkpoints.

The trunk up to `--frozen-until` keeps its pretrained weights and its outputs are cached
(K augmented views per training image); the blocks above it and the new head are trained
with class-weighted cross-entropy. The checkpoint with the best validation macro-AUROC is
kept. Writes <out>/model.keras (no optimizer state) and <out>/train_summary.json.

Usage: python -m training.train [--init nsfwjs|random] [--quick] [--out artifacts/run]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from training.data import (
    CLASSES,
    DEFAULT_SPLIT_FILE,
    default_cache_dir,
    default_data_dir,
    quick_subset,
    read_split,
    run_logger,
)
from training.features import AUGMENTATION, CHUNK, build_image_cache, cached_features, spec_hash
from training.model import DEFAULT_CUT, DEFAULT_FROZEN_UNTIL, build_classifier, split_at
from training.pretrained import pretrained_weights_path
from utils.core.inference import softmax
from utils.core.preprocess import INPUT_SIZE


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return counts.sum() / (n_classes * np.maximum(counts, 1))


def validation_scores(labels: np.ndarray, logits: np.ndarray) -> dict:
    probs = softmax(logits)
    present = np.unique(labels)
    aucs = [roc_auc_score(labels == c, probs[:, c]) for c in present] if len(present) > 1 else [0.5]
    return {
        "macro_auroc": float(np.mean(aucs)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, probs.argmax(1))),
    }


def predict_tail(tail, features: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = [
        np.asarray(tail(features[i : i + batch_size].astype(np.float32), training=False))
        for i in range(0, len(features), batch_size)
    ]
    return np.concatenate(out).astype(np.float64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--out", type=Path, default=Path("artifacts/run"))
    parser.add_argument("--init", choices=("nsfwjs", "random"), default="nsfwjs")
    parser.add_argument("--cut", default=DEFAULT_CUT)
    parser.add_argument("--frozen-until", default=DEFAULT_FROZEN_UNTIL)
    parser.add_argument("--views", type=int, default=4, help="augmented views per training image")
    parser.add_argument(
        "--size",
        type=int,
        default=INPUT_SIZE,
        help="input side in pixels (a resolution study; serving uses utils.core.preprocess.INPUT_SIZE)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="tiny subset, 2 views, 2 epochs: checks the whole pipeline in minutes"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.views, args.epochs = min(args.views, 2), min(args.epochs, 2)
    return args


def train(args) -> dict:
    """The cached-features recipe: trunk features once, then the tail trained on them."""
    started = time.time()
    log = run_logger(args.out)
    data = trunk_features(args, log)
    log(f"features ready after {time.time() - started:.0f} s: train {data['train'].shape}, val {data['val'].shape}")
    state = fit_tail(args, data, started, log)
    summary = save_best(args, data, state, started)
    log(
        f"done: best epoch {state['best_epoch']} val macro-AUROC {state['best_score']:.4f}; "
        f"{time.time() - started:.0f} s"
    )
    return summary


def trunk_features(args, log) -> dict:
    """The split's images through the frozen trunk (cached on disk by their hash): the model,
    its trainable tail, train features (several augmented views each) and validation features."""
    rows = read_split(args.split)
    if args.quick:
        rows = quick_subset(rows, seed=args.seed)
    images = build_image_cache(rows, args.data_dir, args.cache_dir, size=args.size)
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    split_of = np.array([r["split"] for r in rows])
    log(f"{len(rows)} images: " + ", ".join(f"{s} {int((split_of == s).sum())}" for s in ("train", "val", "test")))
    weights_path = pretrained_weights_path(args.cache_dir) if args.init == "nsfwjs" else None
    model = build_classifier(weights_path, cut=args.cut, dropout=args.dropout, seed=args.seed, size=args.size)
    trunk, tail = split_at(model, args.frozen_until)
    tag = spec_hash(
        args.init,
        args.frozen_until,
        AUGMENTATION,
        args.seed,
        [r["sha256"] for r in rows],
        *([args.size] if args.size != INPUT_SIZE else []),
    )
    train_idx, val_idx = np.flatnonzero(split_of == "train"), np.flatnonzero(split_of == "val")
    from_cache = all(
        len(list((args.cache_dir / f"features_{tag}{suffix}").glob("[0-9]*[0-9].npy"))) == -(-n // CHUNK)
        for suffix, n in ((f"_train_v{args.views}", len(train_idx)), ("_val", len(val_idx)))
    )
    train_tag, val_tag = f"{tag}_train_v{args.views}", f"{tag}_val"
    return {
        "rows": rows,
        "model": model,
        "tail": tail,
        "val_idx": val_idx,
        "train": cached_features(trunk, images[train_idx], args.cache_dir, train_tag, args.views, args.seed, log),
        "val": cached_features(trunk, images[val_idx], args.cache_dir, val_tag, 0, args.seed, log)[:, 0],
        "y_train": labels[train_idx],
        "y_val": labels[val_idx],
        "features_from_cache": from_cache,
    }


def train_step_for(tail, args, y_train: np.ndarray, steps_per_epoch: int):
    """(compiled train step, optimizer): AdamW on a cosine schedule, class-weighted loss."""
    weights = tf.constant(class_weights(y_train), dtype=tf.float32)
    schedule = keras.optimizers.schedules.CosineDecay(
        args.lr, decay_steps=max(1, steps_per_epoch * args.epochs), warmup_target=None
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = tail(x, training=True)
            loss = tf.reduce_mean(loss_fn(y, logits) * tf.gather(weights, y))
        grads = tape.gradient(loss, tail.trainable_variables)
        optimizer.apply_gradients(zip(grads, tail.trainable_variables))
        return loss

    return train_step, optimizer


def fit_tail(args, data: dict, started: float, log) -> dict:
    """The epochs, resumable: the state and the last and best weights are saved after each."""
    tail, feats_train, y_train = data["tail"], data["train"], data["y_train"]
    steps_per_epoch = int(np.ceil(len(y_train) / args.batch_size))
    train_step, optimizer = train_step_for(tail, args, y_train, steps_per_epoch)
    state_path, last_ckpt = args.out / "state.json", args.out / "last.weights.h5"
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "history": [], "wall_seconds": 0.0}
    if state_path.exists() and last_ckpt.exists():
        state = json.loads(state_path.read_text())
    earlier_seconds = state.get("wall_seconds", 0.0)
    if state["epoch"] > 0:
        tail.load_weights(last_ckpt)
        optimizer.iterations.assign(state["epoch"] * steps_per_epoch)  # resumes the LR schedule
        log(f"resumed after epoch {state['epoch']} (optimizer moments restart)")
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        if epoch - state["best_epoch"] > args.patience and state["best_epoch"] > 0:
            log(f"early stop: no validation gain for {args.patience} epochs")
            break
        t0 = time.time()
        rng = np.random.default_rng([args.seed, epoch])
        order = rng.permutation(len(y_train))
        views = rng.integers(0, feats_train.shape[1], size=len(order))
        losses = []
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            x = feats_train[batch, views[start : start + args.batch_size]].astype(np.float32)
            losses.append(float(train_step(tf.constant(x), tf.constant(y_train[batch]))))
        scores = validation_scores(data["y_val"], predict_tail(tail, data["val"]))
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), **scores, "seconds": round(time.time() - t0, 1)}
        # Wall time of all invocations so far, feature caching included.
        record_epoch(args.out, tail, state, entry, round(earlier_seconds + time.time() - started, 1))
        log(json.dumps(entry))
    state["earlier_seconds"] = earlier_seconds
    return state


def record_epoch(out: Path, tail, state: dict, entry: dict, wall_seconds: float) -> None:
    """Checkpoint after an epoch: the last weights, the best ones (by macro-AUROC), the state."""
    state["history"].append(entry)
    tail.save_weights(out / "last.weights.h5")
    if entry["macro_auroc"] > state["best_score"]:
        state.update(best_score=entry["macro_auroc"], best_epoch=entry["epoch"])
        tail.save_weights(out / "best.weights.h5")
    state["epoch"], state["wall_seconds"] = entry["epoch"], wall_seconds
    (out / "state.json").write_text(json.dumps(state, indent=1))


def save_best(args, data: dict, state: dict, started: float) -> dict:
    """The best epoch's model, its validation logits and the run summary, written to args.out."""
    tail, y_train = data["tail"], data["y_train"]
    tail.load_weights(args.out / "best.weights.h5")
    data["model"].save(args.out / "model.keras", include_optimizer=False)
    np.savez(
        args.out / "val_logits.npz",
        logits=predict_tail(tail, data["val"]),
        labels=data["y_val"],
        sha256=np.array([data["rows"][i]["sha256"] for i in data["val_idx"]]),
    )
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "best_epoch": state["best_epoch"],
        "best_val_macro_auroc": state["best_score"],
        "history": state["history"],
        "train_counts": np.bincount(y_train, minlength=3).tolist(),
        "class_weights": class_weights(y_train).tolist(),
        "augmentation": AUGMENTATION,
        "wall_seconds": round(state["earlier_seconds"] + time.time() - started, 1),
        "features_from_cache": data["features_from_cache"],
    }
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> None:
    run(parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """The pipeline's entry, as training.finetune.run: train one run from parsed options."""
    return train(args)


if __name__ == "__main__":
    main()
