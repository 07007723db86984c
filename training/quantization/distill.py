"""Quantization-aware fine-tuning: teach the int8 engine's weights to answer as float32 does.

Usage: python -m training.quantization.distill [--bundle-dir model] [--out artifacts/qat]
    [--steps 500] [--batch 8] [--lr 1e-5] [--eval-every 50]

The student is the bundle's model with LiteRT's dynamic-range arithmetic simulated
(training.quantization.fake_quant); the teacher is the same model in float32, frozen. On
training films only (each step: clean films and live-augmentation views), the student learns
the teacher's fracture and severity logits and its pooled features, the three things the
verdict, the uncertain flag and the radiograph guard are read from. Batch normalisation stays
frozen so the converter folds it as before.

Every --eval-every steps the simulated int8 error on --val-films validation films is logged,
the weights are checkpointed (a killed run resumes from there with the same command) and the
best so far by that error (its 99th percentile in P(any fracture)) is kept as best.weights.h5.
`--export` writes the best weights as <out>/model.keras (plain layers, no optimizer state) for
the converter and the equivalence check. Nothing is fitted on a check set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.augment import random_view
from training.data import DEFAULT_SPLIT_FILE, default_cache_dir, default_data_dir, read_split, run_logger
from training.features import build_image_cache
from training.quantization.fake_quant import fake_quantized_clone, plain_clone
from training.quantization.selective import DEFAULT_FLOAT_LAYERS
from utils.core.bundle import DEFAULT_BUNDLE_DIR, load_bundle
from utils.core.inference import calibrated_probabilities, to_model_input

TARGETS = ("fracture_logit", "severity_logit", "pool", "logits")
# The weights evaluated and kept are an exponential moving average of the steps' (over about
# 1 / (1 - AVERAGE_DECAY) steps): batches of 8 films make single steps noisy.
AVERAGE_DECAY = 0.99
# The features' loss is their mean squared error over their own variance (so about 1 at chance).
FEATURE_WEIGHT = 0.1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-dir", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT_FILE)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--out", type=Path, default=Path("artifacts/qat"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--augmented-share", type=float, default=0.5)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--val-films", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float-layers",
        nargs="*",
        default=list(DEFAULT_FLOAT_LAYERS),
        help="convolutions the int8 engine keeps in float (training.quantization.selective)",
    )
    parser.add_argument("--export", action="store_true", help="write the best weights as <out>/model.keras")
    return parser.parse_args(argv)


def targets_of(model: keras.Model) -> keras.Model:
    """The model's fracture logit, severity logit and pooled features, by name."""
    return keras.Model(model.input, {name: model.get_layer(name).output for name in TARGETS})


def freeze_batch_norm(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.get_layer("logits").trainable = False  # the fixed composition of the two stages


def distillation_loss(student: dict, teacher: dict, feature_variance: tf.Tensor) -> tf.Tensor:
    logits = sum(tf.reduce_mean(tf.square(student[k] - teacher[k])) for k in ("fracture_logit", "severity_logit"))
    features = tf.reduce_mean(tf.square(student["pool"] - teacher["pool"]) / feature_variance)
    return logits + FEATURE_WEIGHT * features


def batch_of(images: np.ndarray, step: int, args: argparse.Namespace) -> np.ndarray:
    """The step's films (a fixed shuffle per epoch), some as live-augmentation views."""
    per_epoch = len(images) // args.batch
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([args.seed, epoch]).permutation(len(images))
    rng = np.random.default_rng([args.seed, step])
    films = images[order[position * args.batch : (position + 1) * args.batch]]
    views = [random_view(f, None, rng)[0] if rng.random() < args.augmented_share else f for f in films]
    return to_model_input(np.stack(views)[..., None])


def p_fracture(logits: np.ndarray, temperature: float) -> np.ndarray:
    """P(any fracture) from the model's logits, as serving computes it."""
    return 1.0 - calibrated_probabilities(logits, temperature)[:, 0]


def int8_error(student: keras.Model, teacher_pf: np.ndarray, val_inputs: np.ndarray, temperature: float) -> dict:
    """The simulated int8 engine's |P(any fracture) - float32's| on the validation films."""
    out = [student(val_inputs[i : i + 16], training=False)["logits"] for i in range(0, len(val_inputs), 16)]
    error = np.abs(p_fracture(np.concatenate(out), temperature) - teacher_pf)
    return {"mean": float(error.mean()), "p99": float(np.quantile(error, 0.99)), "max": float(error.max())}


class Distillation:
    """The student, the teacher, the optimizer, the weights' moving average and the checkpoints."""

    def __init__(self, args: argparse.Namespace) -> None:
        bundle = load_bundle(args.bundle_dir, load_keras=True)
        self.args, self.temperature = args, bundle.temperature
        self.teacher = targets_of(bundle.model)
        self.student_model = fake_quantized_clone(bundle.model, args.float_layers)
        freeze_batch_norm(self.student_model)
        self.student = targets_of(self.student_model)
        self.optimizer = keras.optimizers.Adam(args.lr)
        self.state_path = args.out / "state.json"
        fresh: dict[str, Any] = {
            "step": 0,
            "best": None,
            "float_layers": args.float_layers,
            "learning_rate": args.lr,
            "batch": args.batch,
        }
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else fresh
        if self.state["float_layers"] != args.float_layers:
            raise SystemExit(f"{args.out} was trained with float layers {self.state['float_layers']}")
        if self.state["step"]:
            self.student_model.load_weights(args.out / "average.weights.h5")
        self.average = [tf.Variable(v, trainable=False) for v in self.student_model.trainable_variables]
        if self.state["step"]:
            self.student_model.load_weights(args.out / "last.weights.h5")

    @tf.function(reduce_retracing=True)
    def train_step(self, x: tf.Tensor, feature_variance: tf.Tensor) -> tf.Tensor:
        teacher = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            loss = distillation_loss(self.student(x, training=False), teacher, feature_variance)
        variables = self.student_model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        for average, variable in zip(self.average, variables):
            average.assign(AVERAGE_DECAY * average + (1.0 - AVERAGE_DECAY) * variable)
        return loss

    @contextlib.contextmanager
    def averaged(self):
        """The student with the moving average's weights, its own restored afterwards."""
        variables = self.student_model.trainable_variables
        own = [v.numpy() for v in variables]
        for average, variable in zip(self.average, variables):
            variable.assign(average)
        try:
            yield self.student
        finally:
            for value, variable in zip(own, variables):
                variable.assign(value)

    def checkpoint(self, error: dict) -> None:
        """Called inside `averaged`: the average is saved, and kept as the best when it is."""
        out = self.args.out
        self.student_model.save_weights(out / "average.weights.h5")
        if self.state["best"] is None or error["p99"] < self.state["best"]["p99"]:
            self.student_model.save_weights(out / "best.weights.h5")
            self.state["best"] = {**error, "step": self.state["step"]}


def validation_inputs(args: argparse.Namespace, rows: list[dict]) -> np.ndarray:
    val = [r for r in rows if r["split"] == "val"]
    pick = sorted(np.random.default_rng(args.seed).choice(len(val), min(args.val_films, len(val)), replace=False))
    return to_model_input(build_image_cache(val, args.data_dir, args.cache_dir)[pick][..., None])


def run(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    log = run_logger(args.out)
    rows = read_split(args.split)
    train = build_image_cache([r for r in rows if r["split"] == "train"], args.data_dir, args.cache_dir)
    val_inputs = validation_inputs(args, rows)
    job = Distillation(args)
    teacher = [job.teacher(val_inputs[i : i + 16], training=False) for i in range(0, len(val_inputs), 16)]
    teacher_pf = p_fracture(np.concatenate([t["logits"] for t in teacher]), job.temperature)
    pooled = np.concatenate([t["pool"] for t in teacher])
    feature_variance = tf.constant(pooled.var(axis=0) + 1e-6, tf.float32)
    if job.state["step"] == 0:
        job.state["start"] = int8_error(job.student, teacher_pf, val_inputs, job.temperature)
        log(f"step 0: simulated int8 error {job.state['start']}")
    started, losses = time.time(), []
    while job.state["step"] < args.steps:
        losses.append(float(job.train_step(tf.constant(batch_of(train, job.state["step"], args)), feature_variance)))
        job.state["step"] += 1
        if job.state["step"] % args.eval_every == 0 or job.state["step"] == args.steps:
            with job.averaged() as student:
                error = int8_error(student, teacher_pf, val_inputs, job.temperature)
                job.checkpoint(error)
            job.student_model.save_weights(args.out / "last.weights.h5")
            job.state_path.write_text(json.dumps(job.state, indent=1))
            log(
                f"step {job.state['step']}: loss {np.mean(losses):.5f}, simulated int8 error {error}, "
                f"{(time.time() - started) / len(losses):.2f} s/step"
            )
            started, losses = time.time(), []
    return job.state


EXPORT_RECORD = "export.json"  # beside the exported .keras file: its float layers and how it was made


def export(args: argparse.Namespace) -> Path:
    """The best weights as a plain .keras file (the converter never sees the simulation), and
    beside it what the equivalence check and the model card need to know of them."""
    bundle = load_bundle(args.bundle_dir, load_keras=True)
    state = json.loads((args.out / "state.json").read_text())
    student = fake_quantized_clone(bundle.model, state["float_layers"])
    student.load_weights(args.out / "best.weights.h5")
    path = args.out / "model.keras"
    plain_clone(student).save(path, include_optimizer=False)
    record = {
        "method": "quantization-aware fine-tuning (training.quantization.distill): the float32 model's "
        "outputs learnt through simulated dynamic-range int8, on training films only",
        "from_model_sha256": bundle.metadata["sha256"],
        "float_layers": state["float_layers"],
        "chosen_step": state["best"]["step"],
        "steps_run": state["step"],
        "validation_error_at_start": state["start"],
        "validation_error_chosen": {k: v for k, v in state["best"].items() if k != "step"},
        "learning_rate": state["learning_rate"],
        "batch": state["batch"],
    }
    (args.out / EXPORT_RECORD).write_text(json.dumps(record, indent=1))
    return path


def read_export(keras_path: Path) -> dict:
    """What `export` recorded beside an exported .keras file (its float layers, how it was made)."""
    return json.loads(keras_path.with_name(EXPORT_RECORD).read_text())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.export:
        print(export(args))
    else:
        print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()
