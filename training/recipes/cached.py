"""The fast recipe over cached trunk features (training.train), for quick studies."""

from training import train
from training.recipes import Recipe, recipe

CACHED = recipe(
    Recipe(
        name="cached",
        run_prefix="run",
        help="the fast recipe over cached trunk features (training.train, for quick studies)",
        parse_args=train.parse_args,
        run=train.run,
    )
)
