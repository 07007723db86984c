"""The default recipe: two-stage head with a fracture map, fine-tuned with live augmentation.

- Model: `training.model.build_two_stage_classifier` (P(any fracture) from the pooled mixed7
  features plus the max and mean of a per-cell fracture map; P(beyond_repair | fracture) from
  the pooled features; the three class probabilities composed from the two).
- Which images teach what, so that the healthy-vs-fracture decision cannot be learnt from
  the image's source:
  - P(any fracture) learns from FracAtlas, where both answers come from the same hospitals,
    plus the web fractures at a small weight (`--web-fracture-weight`, 0.25: each is a
    positive, so a large weight would teach the source again; 0 is FracAtlas only);
  - the fracture map learns from FracAtlas only; its targets are the cells the boxes cover;
  - P(beyond_repair | fracture) learns among fractures only: FracAtlas fractures and the Bone
    Break types (comminuted = beyond repair).
- Every step draws fresh views (`training.augment.random_view`) for every class; the trunk up
  to `--frozen-until` is frozen (its BatchNorm statistics too) and runs on every view.
- Each epoch takes every FracAtlas fracture and every beyond-repair image, and fresh random
  draws of the healthy films (`--healthy-per-epoch`) and of the other web fractures
  (`--web-fractures-per-epoch`), all within the training split.
- Checkpoints after every epoch (weights, optimizer state, RNG position by epoch): rerunning
  the same command resumes where it stopped. The checkpoint with the best validation score
  (mean of the FracAtlas healthy-vs-fracture AUROC and the severity AUROC among fractures) is
  kept. Runs on CPU; uses a GPU when TensorFlow sees one.

Writes <out>/model.keras (no optimizer state), val_logits.npz and train_summary.json, the files
the later pipeline steps (evaluate, trust, litert, export) read.

`--init-from MODEL.keras` starts from a trained two-stage model instead (deeper fine-tuning of the
shipped one, with `--frozen-until input` for every layer); that model is scored as epoch 0.

Usage: python -m training.finetune [--out artifacts/finetune] [--epochs 8] [--init-from M] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from training.augment import AUGMENTATIONS, LIVE_AUGMENTATION, box_free_view, random_view
from training.backbones import efficientnet_lite2_weights
from training.boxes import MIN_CELL_COVERAGE, box_masks, cell_targets
from training.calibrate import youden_threshold
from training.data import (
    CLASSES,
    DEFAULT_SPLIT_FILE,
    default_cache_dir,
    default_data_dir,
    quick_subset,
    read_split,
    run_logger,
)
from training.features import build_image_cache
from training.model import DEFAULT_CUT, DEFAULT_FROZEN_UNTIL, build_two_stage_classifier, training_view
from training.offsource import check_images, check_rows, epoch_figures, first_knees, selection_score
from training.pretrained import pretrained_weights_path
from utils.core.bundle import sha256_of
from utils.core.inference import softmax, to_model_input
from utils.core.preprocess import INPUT_SIZE

HEALTHY, FRACTURED, BEYOND = range(3)
# Fracture-box cells are rare (about 2 % of the map): their loss counts this many times more.
POSITIVE_CELL_WEIGHT = 10.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--out", type=Path, default=Path("artifacts/finetune"))
    parser.add_argument(
        "--init",
        choices=("nsfwjs", "random"),
        default="nsfwjs",
        help="nsfwjs: the backbone's pretrained weights (InceptionV3 from nsfwjs, "
        "EfficientNet-Lite2 from ImageNet); random: from scratch",
    )
    parser.add_argument(
        "--backbone",
        choices=("inception_v3", "efficientnet_lite2", "small_cnn"),
        default="inception_v3",
        help="the shipped InceptionV3, or the comparison's others",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start from this trained two-stage .keras model (the shipped bundle's, say) instead of "
        "the backbone's pretrained weights; it is scored first as epoch 0, so the selection keeps it "
        "unless an epoch beats it",
    )
    parser.add_argument("--cut", default=DEFAULT_CUT)
    parser.add_argument("--frozen-until", default=DEFAULT_FROZEN_UNTIL)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--healthy-per-epoch", type=int, default=700)
    parser.add_argument("--web-fractures-per-epoch", type=int, default=350)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--localisation-weight", type=float, default=1.0)
    parser.add_argument(
        "--web-fracture-weight",
        type=float,
        default=0.25,
        help="weight of the Bone Break fractures in P(any fracture) (0: FracAtlas only)",
    )
    parser.add_argument(
        "--box-free-share",
        type=float,
        default=0.5,
        help="each epoch, this share of the boxed FracAtlas fractures comes back once more as a "
        "close-up that shows no box, taught as 'no fracture visible' (0: off)",
    )
    parser.add_argument(
        "--augmentation",
        choices=tuple(AUGMENTATIONS),
        default="live",
        help="live: every transform; classic: without the aspect stretch, the tight crop from 224 px, "
        "collimation and the random intensity network (the ablation of those)",
    )
    parser.add_argument(
        "--mixstyle",
        type=float,
        default=0.5,
        help="probability per batch of mixing feature statistics between images at the "
        "frozen trunk's output (MixStyle; 0: off)",
    )
    parser.add_argument(
        "--chest-negatives",
        type=int,
        default=0,
        help="this many chest_kermany films (split by patient) as extra 'no fracture' examples",
    )
    parser.add_argument(
        "--check-knees",
        type=int,
        default=400,
        help="knee films of the unseen-source check scored each epoch (all wrist and hbfmid films)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCH",
        help="stop after this epoch as an interruption would (rerun without it to go on)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny subset, 2 epochs: checks the recipe in minutes")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.healthy_per_epoch = min(args.epochs, 2), min(args.healthy_per_epoch, 8)
        args.web_fractures_per_epoch = min(args.web_fractures_per_epoch, 4)
    return args


def epoch_order(  # noqa: PLR0913  (named in pyproject.toml)
    labels: np.ndarray,
    from_fracatlas: np.ndarray,
    healthy_per_epoch: int,
    web_fractures_per_epoch: int,
    rng: np.random.Generator,
    boxed: np.ndarray | None = None,
    box_free_share: float = 0.0,
    every_epoch: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, box_free flags): every FracAtlas fracture and every beyond-repair image, fresh
    draws of the FracAtlas healthy films and of the other web fractures, the `every_epoch`
    images (extra negatives from another source), and a share of the boxed fractures once more
    as box-free close-ups (flag True), shuffled together."""
    extra = np.zeros(len(labels), bool) if every_epoch is None else every_epoch
    keep = np.flatnonzero((labels == BEYOND) | ((labels == FRACTURED) & from_fracatlas) | extra)
    drawn = [keep]
    for pool, n in (
        (np.flatnonzero((labels == HEALTHY) & ~extra), healthy_per_epoch),
        (np.flatnonzero((labels == FRACTURED) & ~from_fracatlas), web_fractures_per_epoch),
    ):
        drawn.append(rng.choice(pool, size=min(n, pool.size), replace=False))
    flags = [np.zeros(sum(len(d) for d in drawn), bool)]
    if boxed is not None and box_free_share > 0 and len(boxed):
        repeat = rng.choice(boxed, size=int(round(box_free_share * len(boxed))), replace=False)
        drawn.append(repeat)
        flags.append(np.ones(len(repeat), bool))
    order = rng.permutation(sum(len(d) for d in drawn))
    return np.concatenate(drawn)[order], np.concatenate(flags)[order]


def stage_targets(
    labels: np.ndarray,
    from_fracatlas: np.ndarray,
    severe_weight: float,
    web_fracture_weight: float = 0.0,
    shows_fracture: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Targets and per-image weights of the two stages (see the module docstring).

    web_fracture_weight > 0 lets the web fractures (every one a positive) into P(any fracture)
    at that weight: more fracture examples, at the risk of teaching the source again.
    shows_fracture False marks a view of a fractured film that shows no fracture (a box-free
    close-up): a negative for P(any fracture), and no severity target.
    """
    if shows_fracture is not None:
        labels = np.where(shows_fracture, labels, HEALTHY)
    fractured = labels != HEALTHY
    fracture_w = np.where(from_fracatlas, 1.0, web_fracture_weight).astype(np.float32)
    return {
        "fracture": fractured.astype(np.float32),
        "fracture_w": fracture_w,
        "severity": (labels == BEYOND).astype(np.float32),
        "severity_w": np.where(labels == BEYOND, severe_weight, 1.0).astype(np.float32) * fractured,
    }


def make_batch(  # noqa: PLR0913  (named in pyproject.toml)
    images: np.ndarray,
    masks: dict,
    indices: np.ndarray,
    labels: np.ndarray,
    from_fracatlas: np.ndarray,
    grid: int,
    seeds: list,
    params: dict = LIVE_AUGMENTATION,
    box_free: np.ndarray | None = None,
):
    """Fresh views of images[indices] with their localisation targets.

    Returns (x (B, S, S, 1) uint8, cell targets (B, g, g), map weight (B,), shows fracture (B,)):
    FracAtlas healthy films (and other "no fracture" sources) teach an empty map, FracAtlas
    fractures with boxes teach their boxes' cells, a box-free close-up of a fractured film
    (box_free True) teaches an empty map and no fracture, web figures do not train the map.
    """
    views, targets, weights, shows = [], [], [], []
    box_free = np.zeros(len(indices), bool) if box_free is None else box_free
    for index, seed, free in zip(indices, seeds, box_free):
        rng = np.random.default_rng(seed)
        mask = masks.get(int(index))
        view = box_free_view(images[index], mask, rng, params) if free and mask is not None else None
        if view is not None:
            views.append(view)
            targets.append(np.zeros((grid, grid), np.float32))
            weights.append(1.0)
            shows.append(False)
            continue
        view, mask = random_view(images[index], mask, rng, params)
        views.append(view)
        targets.append(cell_targets(mask, grid) if mask is not None else np.zeros((grid, grid), np.float32))
        weights.append(float((from_fracatlas[index] and mask is not None) or labels[index] == HEALTHY))
        shows.append(True)
    return np.stack(views)[..., None], np.stack(targets), np.array(weights, np.float32), np.array(shows)


def validation_scores(
    labels: np.ndarray,
    sources: np.ndarray,
    log_probs: np.ndarray,
    cell_logits: np.ndarray | None = None,
    val_targets: dict | None = None,
) -> dict:
    """FracAtlas healthy-vs-fracture AUROC, severity AUROC among fractures, macro-AUROC,
    balanced accuracy (argmax) and, with box targets, how often the map's peak is in a box."""
    probs = softmax(log_probs)
    p_any = probs[:, 1] + probs[:, 2]
    scores = {}
    fa = sources == "fracatlas"
    fa_labels = labels[fa] != HEALTHY
    scores["fracatlas_auroc"] = float(roc_auc_score(fa_labels, p_any[fa])) if len(set(fa_labels)) > 1 else 0.5
    fractures = labels != HEALTHY
    severe = labels[fractures] == BEYOND
    p_severe = probs[fractures, 2] / np.maximum(p_any[fractures], 1e-12)
    scores["severity_auroc"] = float(roc_auc_score(severe, p_severe)) if len(set(severe)) > 1 else 0.5
    present = np.unique(labels)
    scores["macro_auroc"] = (
        float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present])) if len(present) > 1 else 0.5
    )
    scores["balanced_accuracy"] = float(balanced_accuracy_score(labels, probs.argmax(1)))
    scores["score"] = (scores["fracatlas_auroc"] + scores["severity_auroc"]) / 2
    if cell_logits is not None and val_targets:
        hits = [bool(target.ravel()[int(np.argmax(cell_logits[i].ravel()))] > 0) for i, target in val_targets.items()]
        scores["map_peak_in_box"] = float(np.mean(hits))
    return scores


def pretrained(args) -> bool:
    return getattr(args, "init", "nsfwjs") != "random" and getattr(args, "backbone", "inception_v3") != "small_cnn"


def backbone_weights(args) -> Path | None:
    if not pretrained(args):
        return None
    if args.backbone == "efficientnet_lite2":
        return efficientnet_lite2_weights(args.cache_dir)

    return pretrained_weights_path(args.cache_dir)


def mix_style(features, alpha: float = 0.1, eps: float = 1e-6):
    """MixStyle (Zhou et al., ICLR 2021): each image's per-channel feature mean and spread are
    mixed with another image's of the batch (weights from Beta(alpha, alpha)), so the tail
    cannot key on an image's style (exposure, detector, processing) rather than its content."""
    mean = tf.reduce_mean(features, axis=(1, 2), keepdims=True)
    spread = tf.sqrt(tf.math.reduce_variance(features, axis=(1, 2), keepdims=True) + eps)
    normed = (features - mean) / spread
    batch = tf.shape(features)[0]
    g1, g2 = tf.random.gamma((batch, 1, 1, 1), alpha), tf.random.gamma((batch, 1, 1, 1), alpha)
    weight = g1 / (g1 + g2 + eps)
    other = tf.random.shuffle(tf.range(batch))
    mixed_mean = weight * mean + (1 - weight) * tf.gather(mean, other)
    mixed_spread = weight * spread + (1 - weight) * tf.gather(spread, other)
    return normed * mixed_spread + mixed_mean


class Trainer:
    """Owns the model, the optimizer and their checkpoints in one run folder."""

    def __init__(self, model, args, steps_per_epoch: int):

        self.model, self.args = model, args
        self.trunk, self.tail = training_view(model, args.frozen_until)
        if pretrained(args):  # small batches: keep the pretrained BatchNorm statistics
            for layer in self.tail.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
        schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(1, steps_per_epoch * args.epochs))
        self.optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay)
        self.optimizer.build(self.tail.trainable_variables)
        self.grid = int(model.get_layer("localisation_logit").output.shape[1])
        self._step: Callable[..., Any] | None = None

    def checkpoint_paths(self, folder: Path) -> tuple[Path, Path]:
        return folder / "last.weights.h5", folder / "last_optimizer.npz"

    def save(self, folder: Path) -> None:
        weights, optimizer = self.checkpoint_paths(folder)
        self.tail.save_weights(weights)
        np.savez(optimizer, *[np.asarray(v) for v in self.optimizer.variables])

    def restore(self, folder: Path) -> None:
        weights, optimizer = self.checkpoint_paths(folder)
        self.tail.load_weights(weights)
        saved = np.load(optimizer)
        for i, variable in enumerate(self.optimizer.variables):
            variable.assign(saved[f"arr_{i}"])

    def train_step(self, x, cell_targets, map_weight, targets):
        if self._step is None:
            bce = tf.nn.sigmoid_cross_entropy_with_logits
            tail, trunk, optimizer, lam = self.tail, self.trunk, self.optimizer, self.args.localisation_weight
            mix_p = float(getattr(self.args, "mixstyle", 0.0))

            @tf.function(reduce_retracing=True)
            def step(x, cell_targets, map_weight, fracture, fracture_w, severity, severity_w):  # noqa: PLR0913  (named in pyproject.toml)
                features = trunk(x, training=False)
                if mix_p > 0:
                    features = tf.cond(tf.random.uniform(()) < mix_p, lambda: mix_style(features), lambda: features)
                with tf.GradientTape() as tape:
                    out = tail(features, training=True)
                    loss_fracture = tf.reduce_sum(bce(fracture, out["fracture_logit"][:, 0]) * fracture_w) / tf.maximum(
                        tf.reduce_sum(fracture_w), 1.0
                    )
                    loss_severity = tf.reduce_sum(bce(severity, out["severity_logit"][:, 0]) * severity_w) / tf.maximum(
                        tf.reduce_sum(severity_w), 1.0
                    )
                    cells = out["localisation_logit"][..., 0]
                    cell_w = 1.0 + (POSITIVE_CELL_WEIGHT - 1.0) * cell_targets
                    per_image = tf.reduce_mean(bce(cell_targets, cells) * cell_w, axis=(1, 2))
                    loss_map = tf.reduce_sum(per_image * map_weight) / tf.maximum(tf.reduce_sum(map_weight), 1.0)
                    loss = loss_fracture + loss_severity + lam * loss_map
                grads = tape.gradient(loss, tail.trainable_variables)
                optimizer.apply_gradients(zip(grads, tail.trainable_variables))
                return tf.stack([loss, loss_fracture, loss_severity, loss_map])

            self._step = step

        return np.asarray(
            self._step(
                to_model_input(x),
                cell_targets,
                map_weight,
                targets["fracture"],
                targets["fracture_w"],
                targets["severity"],
                targets["severity_w"],
            )
        )

    def predict(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(log-probabilities (N, 3), cell logits (N, g, g)) of clean (N, S, S) uint8 images."""

        if not hasattr(self, "_predict"):
            trunk, tail = self.trunk, self.tail
            self._predict = tf.function(lambda x: tail(trunk(x, training=False), training=False), reduce_retracing=True)
        logits, cells = [], []
        for i in range(0, len(images), batch_size):
            out = self._predict(to_model_input(images[i : i + batch_size, ..., None]))
            logits.append(np.asarray(out["logits"], np.float64))
            cells.append(np.asarray(out["localisation_logit"])[..., 0])
        return np.concatenate(logits), np.concatenate(cells)


def fit(model, data: dict, args, log=print) -> dict:
    """Train on data["train"] and select on data["val"] (plus data["checks"], the unseen-source
    films, when present: measured each epoch, never trained on); each split is a dict of images
    (N, S, S) uint8, labels (N,), sources (N,) and masks {index: (S, S) bool}. Resumes from args.out."""
    started = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train, val = data["train"], data["val"]
    plan = EpochPlan(train, args)
    severe_weight = severity_weight(train["labels"])
    trainer = Trainer(model, args, int(np.ceil(len(plan(0)[0]) / args.batch_size)))
    val_targets = {i: cell_targets(m, trainer.grid) for i, m in val["masks"].items()}
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "history": [], "wall_seconds": 0.0}
    if (out / "state.json").exists() and trainer.checkpoint_paths(out)[0].exists():
        state = json.loads((out / "state.json").read_text())
        trainer.restore(out)
        log(f"resumed after epoch {state['epoch']} (weights and optimizer state)")
    elif getattr(args, "init_from", None):
        save_epoch(trainer, out, state, {**score_epoch(trainer, data, val_targets), "epoch": 0}, 0.0)
        log(json.dumps(state["history"][-1]))
    earlier_seconds = state["wall_seconds"]
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        t0 = time.time()
        losses, images = train_epoch(trainer, plan, train, args, epoch, severe_weight)
        entry = score_epoch(trainer, data, val_targets)
        mean_loss = np.mean(losses, axis=0)
        entry.update(
            epoch=epoch,
            loss=float(mean_loss[0]),
            loss_fracture=float(mean_loss[1]),
            loss_severity=float(mean_loss[2]),
            loss_map=float(mean_loss[3]),
            images=images,
            seconds=round(time.time() - t0, 1),
        )
        save_epoch(trainer, out, state, entry, round(earlier_seconds + time.time() - started, 1))
        log(json.dumps(entry))
        if getattr(args, "stop_after", None) and epoch >= args.stop_after and epoch < args.epochs:
            log(f"stopped after epoch {epoch} of {args.epochs} (--stop-after); rerun to resume")
            return {"state": state, "stopped": True}
    trainer.tail.load_weights(out / "best.weights.h5")
    model.save(out / "model.keras", include_optimizer=False)
    log_probs, _ = trainer.predict(val["images"])
    return {
        "state": state,
        "val_log_probs": log_probs,
        "severe_weight": severe_weight,
        "wall_seconds": round(earlier_seconds + time.time() - started, 1),
    }


def severity_weight(labels: np.ndarray) -> float:
    """The weight of a beyond-repair film in the severity stage: sqrt(other fractures / severe)."""
    n_fractures, n_severe = int((labels != HEALTHY).sum()), int((labels == BEYOND).sum())
    return float(np.sqrt(max(n_fractures - n_severe, 1) / max(n_severe, 1)))


def train_epoch(
    trainer: Trainer, plan: EpochPlan, train: dict, args, epoch: int, severe_weight: float
) -> tuple[list, int]:
    """One epoch's steps, the next batch's views drawn in a thread while this one trains;
    returns the per-step losses and the number of images seen."""
    order, box_free = plan(epoch)
    batches = [slice(i, i + args.batch_size) for i in range(0, len(order), args.batch_size)]

    def prepare(b, part):
        batch = order[part]
        seeds = [[args.seed, epoch, b, j] for j in range(len(batch))]
        x, cells, map_weight, shows = make_batch(
            train["images"], train["masks"], batch, train["labels"], plan.clinical, trainer.grid, seeds,
            AUGMENTATIONS[getattr(args, "augmentation", "live")], box_free[part],
        )  # fmt: skip
        targets = stage_targets(
            train["labels"][batch], plan.clinical[batch], severe_weight, getattr(args, "web_fracture_weight", 0.0),
            shows,
        )  # fmt: skip
        return (x, cells, map_weight), targets

    losses = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, 0, batches[0])
        for b in range(len(batches)):
            (x, cells, map_weight), targets = pending.result()
            if b + 1 < len(batches):
                pending = pool.submit(prepare, b + 1, batches[b + 1])
            losses.append(trainer.train_step(x, cells, map_weight, targets))
    return losses, int(len(order))


def save_epoch(trainer: Trainer, out: Path, state: dict, entry: dict, wall_seconds: float) -> None:
    """Checkpoint after an epoch: the best weights by the selection score, the last weights
    with the optimizer state, and the state file a rerun resumes from."""
    state["history"].append(entry)
    if entry["score"] > state["best_score"]:
        state.update(best_score=entry["score"], best_epoch=entry["epoch"])
        trainer.tail.save_weights(out / "best.weights.h5")
    trainer.save(out)
    state["epoch"], state["wall_seconds"] = entry["epoch"], wall_seconds
    (out / "state.json").write_text(json.dumps(state, indent=1))


class EpochPlan:
    """What each epoch trains on: plan(epoch) -> (indices, box_free flags), drawn from the seed."""

    def __init__(self, train: dict, args):
        self.labels, self.args = train["labels"], args
        # Clinical films (FracAtlas and extra negatives) count fully in P(any fracture).
        self.clinical = train["sources"] != "bone_break"
        self.extra = train["sources"] == "chest_kermany"
        self.boxed = np.array(sorted(train["masks"]), dtype=int)

    def __call__(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        a = self.args
        return epoch_order(
            self.labels,
            self.clinical & ~self.extra,
            a.healthy_per_epoch,
            a.web_fractures_per_epoch,
            np.random.default_rng([a.seed, epoch]),
            self.boxed,
            getattr(a, "box_free_share", 0.0),
            self.extra,
        )


def score_epoch(trainer: Trainer, data: dict, val_targets: dict) -> dict:
    """Validation scores, the unseen-source figures (when data["checks"] is there) and the
    selection score combining them (training.offsource.selection_score)."""
    val = data["val"]
    log_probs, cell_logits = trainer.predict(val["images"])
    scores = validation_scores(val["labels"], val["sources"], log_probs, cell_logits, val_targets)
    checks = data.get("checks") or {}
    p_checks = {name: 1.0 - softmax(trainer.predict(c["images"])[0])[:, 0] for name, c in checks.items()}
    check_labels = {name: c["labels"] for name, c in checks.items()}
    return with_selection_score(scores, val["labels"], val["sources"], log_probs, p_checks, check_labels)


def with_selection_score(  # noqa: PLR0913  (named in pyproject.toml)
    scores: dict,
    labels: np.ndarray,
    sources: np.ndarray,
    log_probs: np.ndarray,
    p_checks: dict[str, np.ndarray],
    check_labels: dict[str, list[str]],
) -> dict:
    """validation_scores' dict plus, when there are checks, their figures at the FracAtlas
    validation threshold, and the selection score (training.offsource.selection_score) that
    every epoch and candidate is chosen on; `val_only_score` keeps the validation score."""
    figures = None
    if p_checks:
        p_any = 1.0 - softmax(log_probs)[:, 0]
        fa = sources == "fracatlas"
        threshold = youden_threshold(labels[fa] != HEALTHY, p_any[fa])
        figures = epoch_figures(p_checks, check_labels, threshold)
        scores.update(figures, val_fracture_threshold=threshold)
    scores["val_only_score"] = scores["score"]
    scores["score"] = selection_score(scores, figures)
    return scores


def chest_negative_rows(data_dir: Path, count: int, seed: int = 0) -> list[dict]:
    """`count` normal chest_kermany films as training-only "no fracture" rows, one per patient
    (patients drawn at random, so no patient appears twice)."""
    rows = [r for r in check_rows(data_dir, "chest_kermany") if r["finding"] == "normal"]
    by_patient: dict[str, dict] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], row)
    patients = sorted(by_patient)
    picked = np.random.default_rng(seed).permutation(len(patients))[:count]
    return [
        {
            "path": f"chest_kermany/{by_patient[patients[i]]['path']}",
            "sha256": by_patient[patients[i]]["sha256"],
            "source": "chest_kermany",
            "label": "healthy",
            "split": "train",
        }
        for i in sorted(picked)
    ]


def load_data(args, log=print) -> tuple[dict, list[dict]]:
    rows = read_split(args.split)
    if args.quick:
        rows = quick_subset(rows, seed=args.seed)
    images = build_image_cache(rows, args.data_dir, args.cache_dir)
    masks = box_masks(rows, args.data_dir, args.cache_dir, images.shape[1])
    if getattr(args, "chest_negatives", 0):  # cached apart, so the main cache stays valid
        chest = chest_negative_rows(args.data_dir, args.chest_negatives, args.seed)
        images = np.concatenate([images, build_image_cache(chest, args.data_dir, args.cache_dir)])
        rows = rows + chest
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    sources = np.array([r["source"] for r in rows])
    split_of = np.array([r["split"] for r in rows])
    data: dict[str, Any] = {}
    for split in ("train", "val"):
        idx = np.flatnonzero(split_of == split)
        position = {int(i): j for j, i in enumerate(idx)}
        data[split] = {
            "images": images[idx],
            "labels": labels[idx],
            "sources": sources[idx],
            "sha256": np.array([rows[i]["sha256"] for i in idx]),
            "masks": {position[i]: m for i, m in masks.items() if i in position},
        }
    knees = 12 if args.quick else getattr(args, "check_knees", 400)
    checks = first_knees(check_images(args.data_dir, args.cache_dir, limit_per_source=None), knees)
    if args.quick:
        checks = {name: {k: v[:12] for k, v in c.items()} for name, c in checks.items()}
    if "hbfmid_check" in checks:
        data["checks"] = checks
    log(
        f"{len(rows)} images; train {len(data['train']['labels'])} ({len(data['train']['masks'])} with boxes), "
        f"val {len(data['val']['labels'])}; unseen-source films scored each epoch: "
        + (", ".join(f"{n} {len(c['labels'])}" for n, c in checks.items()) or "none")
    )
    return data, rows


def main(argv=None) -> dict:
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """Train, select and save one run (args from parse_args): its model, validation logits and summary."""
    log = run_logger(args.out)

    data, _ = load_data(args, log)
    if args.backbone != "inception_v3" and args.frozen_until == DEFAULT_FROZEN_UNTIL:
        args.frozen_until = "input"  # the comparison's other backbones train every layer
    model = build_two_stage_classifier(
        backbone_weights(args),
        cut=args.cut,
        dropout=args.dropout,
        seed=args.seed,
        size=data["train"]["images"].shape[1],
        backbone=args.backbone,
    )
    if getattr(args, "init_from", None):
        model.set_weights(keras.saving.load_model(args.init_from, compile=False).get_weights())
    result = fit(model, data, args, log)
    if result.get("stopped"):
        return {}
    state, val = result["state"], data["val"]
    np.savez(args.out / "val_logits.npz", logits=result["val_log_probs"], labels=val["labels"], sha256=val["sha256"])
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    train_labels = data["train"]["labels"]
    summary = {
        "recipe": "training.finetune (two-stage head, fracture map, live augmentation)",
        "backbone": args.backbone,
        "args": {**{k: str(v) for k, v in vars(args).items()}, "views": "live"},
        "best_epoch": state["best_epoch"],
        "best_val_score": state["best_score"],
        "best_val_macro_auroc": best["macro_auroc"],
        "history": state["history"],
        "train_counts": np.bincount(train_labels, minlength=3).tolist(),
        "class_weights": [1.0, 1.0, 1.0],
        "severe_weight": result["severe_weight"],
        "positive_cell_weight": POSITIVE_CELL_WEIGHT,
        "min_cell_coverage": MIN_CELL_COVERAGE,
        "augmentation": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in AUGMENTATIONS[args.augmentation].items()
        },
        "input_size": int(data["train"]["images"].shape[1]),
        "serving_input_size": INPUT_SIZE,
        "wall_seconds": result["wall_seconds"],
        "features_from_cache": False,
        # The starting bundle's file may be replaced later; its hash says which model it was.
        "init_from_sha256": sha256_of(Path(args.init_from)) if getattr(args, "init_from", None) else None,
    }
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    log(
        f"done: best epoch {state['best_epoch']} val score {state['best_score']:.4f} "
        f"(FracAtlas AUROC {best['fracatlas_auroc']:.4f}, severity AUROC {best['severity_auroc']:.4f}); "
        f"{result['wall_seconds']:.0f} s in all"
    )
    return summary


if __name__ == "__main__":
    main()
