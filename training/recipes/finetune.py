"""The default recipe: two-stage head, fracture map, live augmentation (training.finetune;
hours on 2 cores)."""

from training import finetune
from training.recipes import Recipe, recipe

FINETUNE = recipe(
    Recipe(
        name="finetune",
        run_prefix="finetune",
        help="two-stage head, fracture map, live augmentation (training.finetune, the default, hours on 2 cores)",
        parse_args=finetune.parse_args,
        run=finetune.run,
    )
)
