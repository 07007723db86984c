"""The inputs the CLI and the Ray engine share: paths, folders and image URLs, read into bytes.

One module, so the Ray adapter reads inputs exactly as the local CLI does without importing it.
"""

from __future__ import annotations

import os
from pathlib import Path

from utils.adapters.url_input import UrlRefused, fetch_image_bytes, has_scheme
from utils.core.classifier import SERVING, Prediction, Preparation, prepare_input
from utils.core.pixels import InputError

MAX_FILE_BYTES = 256 * 1024 * 1024


def expand_paths(paths: list[str]) -> list[Path | str]:
    """Files as given, folders recursed in sorted order (hidden entries skipped); URLs (any
    scheme://) stay strings (a Path would fold their '//'), for the URL rules to answer."""
    found: list[Path | str] = []
    for raw in paths:
        if has_scheme(raw):
            found.append(raw)
            continue
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
        else:
            found.append(path)
    return found


def read_input(path: Path | str) -> bytes:
    """The bytes of a file, or of an image URL fetched under utils.adapters.url_input's rules."""
    if isinstance(path, str) and has_scheme(path):
        try:
            return fetch_image_bytes(path)
        except UrlRefused as exc:
            raise InputError(str(exc)) from None
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"The file is larger than {MAX_FILE_BYTES // 2**20} MB.")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError("No such file.") from None
    except IsADirectoryError:
        raise InputError("This is a folder, not a file.") from None
    except PermissionError:
        raise InputError("Permission denied: the file cannot be read.") from None
    except OSError as exc:
        raise InputError(f"The file cannot be read ({exc.strerror or exc}).") from None


def prepare_path(
    path: Path | str, input_size: int, population: str = "unknown", how: Preparation = SERVING
) -> Prediction:
    """Read and decode one input into a Prediction (model input, or its error)."""
    try:
        return prepare_input(str(path), read_input(path), input_size, population, how)
    except InputError as exc:
        return Prediction(name=str(path), error=str(exc))
