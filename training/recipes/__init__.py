"""The training recipes the pipeline can run, each a module of this package that registers
itself: a new recipe is a new module here with a name (`recipe(...)`), not an edit of
training/pipeline.py.

A recipe turns the split into a run folder (training/run_folder.py): `parse_args(argv)` reads
its options (the pipeline passes the ones it does not know itself), `run(args)` trains.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    run_prefix: str  # the run folder is <runs-dir>/<run_prefix>_<init><suffix>
    help: str
    parse_args: Callable[[list[str]], argparse.Namespace]
    run: Callable[[argparse.Namespace], Any]


RECIPES: dict[str, Recipe] = {}


def recipe(entry: Recipe) -> Recipe:
    """Register a recipe under its name (called by each module of this package)."""
    if entry.name in RECIPES:
        raise ValueError(f"two recipes are named {entry.name!r}")
    RECIPES[entry.name] = entry
    return entry


def all_recipes() -> dict[str, Recipe]:
    """Every recipe of this package, its modules imported once."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return RECIPES
