"""Load the model bundle (`model/`): metadata.json plus the .keras file it names.

The file's sha256 is checked against metadata before Keras reads it, so a missing, partial
or altered model stops with a clear message instead of a traceback or wrong predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from utils.core.engines import litert_available
from utils.core.guard import FeatureGuard, RadiographGuard, load_guard
from utils.core.input_size import INPUT_SIZE
from utils.core.intended_use import InputLimits
from utils.core.shift import ShiftScore

DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parents[2] / "model"
METADATA_FILE = "metadata.json"


FASTER_PRECISIONS = ("int8",)
# One engine everywhere (app, CLI, PACS, Ray), so one film gets one verdict: the fastest that
# passed the equivalence check, unless this variable names another ("float32" or "int8").
PRECISION_VARIABLE = "BONE_XRAY_PRECISION"


class ModelBundleError(RuntimeError):
    """The bundled model cannot be used; str(error) says why and what to do."""


class Bundle:
    """metadata.json with what it names: the .keras model (loaded on first use, since serving
    can run the LiteRT file without TensorFlow), the LiteRT file, the guard statistics."""

    def __init__(
        self,
        model: Any = None,
        metadata: dict[str, Any] | None = None,
        directory: Path = Path("."),
        guard: RadiographGuard | FeatureGuard | None = None,
        model_path: Path | None = None,
        litert_paths: dict[str, Path] | None = None,
    ) -> None:
        self._model = model
        self.metadata = metadata or {}
        self.directory = Path(directory)
        self.guard = guard  # utils.core.guard.FeatureGuard, or None when the bundle has none
        # The LiteRT files by precision: "float32", and the faster engines that passed the
        # equivalence check ("int8").
        self.litert_paths = dict(litert_paths or {})
        self.model_path = model_path
        # How unlike the training films a film is (None: the bundle ships no shift score);
        # load_bundle sets it from the bundle's file.
        self.shift_score: ShiftScore | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The keras.Model, loaded (once) when first asked for."""
        with self._lock:
            if self._model is None:
                if self.model_path is None:
                    raise ModelBundleError("The bundle names no .keras model file.")
                self._model = load_keras_model(self.model_path)
            return self._model

    @property
    def litert_path(self) -> Path | None:
        """The float32 LiteRT file, when the bundle ships one."""
        return self.litert_paths.get("float32")

    @property
    def temperature(self) -> float:
        return float(self.metadata["temperature"])

    def temperature_for(self, precision: str) -> float:
        """A faster engine may carry its own temperature (fitted on validation)."""
        if precision == "float32":
            return self.temperature
        return float(self.metadata.get(f"runtime_{precision}", {}).get("temperature", self.temperature))

    @property
    def input_size(self) -> int:
        """The side of the square model input (metadata["input"]["shape"] is [N, S, S, 3])."""
        return int(self.metadata.get("input", {}).get("shape", [None, INPUT_SIZE])[1])

    @property
    def input_limits(self) -> InputLimits | None:
        """The film sizes the model was validated on (None: the bundle states none)."""
        return InputLimits.from_metadata(self.metadata.get("input_limits"))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.metadata["classes"])

    def preset(self, name: str) -> dict[str, Any]:
        presets = self.metadata["presets"]
        if name not in presets:
            raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        return presets[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_dir() -> Path:
    return Path(os.environ.get("BONE_XRAY_MODEL_DIR", DEFAULT_BUNDLE_DIR))


def read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelBundleError(
            f"No model metadata at {path}. Reinstall the app or run the training pipeline to create the model bundle."
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelBundleError(f"{path} is not valid JSON ({exc.msg}); restore it from the repository.") from None
    missing = [k for k in ("model_file", "sha256", "classes", "temperature", "presets") if k not in metadata]
    if missing:
        raise ModelBundleError(f"{path} lacks {', '.join(missing)}; restore it from the repository.")
    return metadata


def serving_precision(metadata: dict[str, Any]) -> str:
    """The engine every serving path runs: $BONE_XRAY_PRECISION when set, else int8 when the
    bundle ships it (it passed the equivalence check in the model card), else float32."""
    chosen = os.environ.get(PRECISION_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in ("float32", *FASTER_PRECISIONS):
            raise ModelBundleError(f"{PRECISION_VARIABLE}={chosen!r} is not an engine; use float32 or int8.")
        if chosen == "int8" and not metadata.get("runtime_int8"):
            raise ModelBundleError(
                f"{PRECISION_VARIABLE}=int8, but this model bundle ships no int8 engine (see its model card's "
                "equivalence check); unset it or use float32."
            )
        return chosen

    return "int8" if metadata.get("runtime_int8") and litert_available() else "float32"


def verify_model_file(directory: Path, metadata: dict[str, Any]) -> Path:
    path = directory / metadata["model_file"]
    if not path.exists():
        raise ModelBundleError(
            f"The model file {path} is missing. If you cloned the repository, "
            "check that the file was fetched completely."
        )
    actual = sha256_of(path)
    if actual != metadata["sha256"]:
        raise ModelBundleError(
            f"The model file {path.name} does not match its metadata "
            f"(sha256 {actual[:12]}... instead of {metadata['sha256'][:12]}...): it is "
            "damaged or was replaced. Restore it from the repository."
        )
    return path


def load_feature_guard(directory: Path, metadata: dict[str, Any]) -> RadiographGuard | FeatureGuard | None:
    """The not-an-X-ray guard's statistics named in metadata["guard"], checked by sha256."""
    path = verify_derived_file(directory, metadata, "guard", "guard file")
    if path is None:
        return None
    try:
        return load_guard(path)
    except Exception as exc:  # a damaged npz raises several types
        raise ModelBundleError(f"The guard file {path.name} cannot be read: {type(exc).__name__}.") from None


def load_shift_score(directory: Path, metadata: dict[str, Any]) -> ShiftScore | None:
    """The shift score's training-film bank named in metadata["shift_score"], checked by sha256."""
    path = verify_derived_file(directory, metadata, "shift_score", "shift score file")
    if path is None:
        return None
    try:
        return ShiftScore.load(path)
    except Exception as exc:  # a damaged npz raises several types
        raise ModelBundleError(f"The shift score file {path.name} cannot be read: {type(exc).__name__}.") from None


def verify_derived_file(directory: Path, metadata: dict[str, Any], key: str, what: str) -> Path | None:
    """The file metadata[key] names ({"file", "sha256"}), checked; None when there is no entry."""
    spec = metadata.get(key)
    if not spec:
        return None
    path = directory / spec["file"]
    if not path.exists() or sha256_of(path) != spec["sha256"]:
        raise ModelBundleError(
            f"The {what} {path.name} is missing or does not match its metadata; restore it from the repository."
        )
    return path


def load_keras_model(path: Path) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: PLC0415  (TensorFlow takes seconds and ~500 MB to import; only the float32 Keras engine needs it)

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad archive
        raise ModelBundleError(f"Keras could not load {path.name}: {type(exc).__name__}.") from None


def load_bundle(directory: Path | None = None, load_keras: bool | None = None) -> Bundle:
    """Check every file against metadata.json and load the bundle. load_keras None: load the
    .keras model now only when serving will need it (no LiteRT file, or ai-edge-litert absent)."""
    directory = Path(directory or bundle_dir())
    metadata = read_metadata(directory)
    model_path = verify_model_file(directory, metadata)
    litert_path = verify_derived_file(directory, metadata, "runtime", "LiteRT file")
    faster = {
        precision: verify_derived_file(directory, metadata, f"runtime_{precision}", f"{precision} LiteRT file")
        for precision in FASTER_PRECISIONS
    }
    if load_keras is None:
        load_keras = litert_path is None or not litert_available()
    model = load_keras_model(model_path) if load_keras else None
    bundle = Bundle(
        model=model,
        metadata=metadata,
        directory=directory,
        guard=load_feature_guard(directory, metadata),
        model_path=model_path,
        litert_paths={k: v for k, v in {"float32": litert_path, **faster}.items() if v is not None},
    )
    bundle.shift_score = load_shift_score(directory, metadata)
    return bundle
