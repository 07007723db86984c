"""The README's figures come from the shipped bundle's metadata, so they cannot drift."""

from __future__ import annotations

import json

from tests.conftest import REPO
from training.release.readme_figures import figures_table, readme_block


def test_the_readme_figures_are_the_bundles():
    metadata = json.loads((REPO / "model" / "metadata.json").read_text())
    assert readme_block((REPO / "README.md").read_text()) == figures_table(metadata)


def test_the_figures_table_follows_the_metadata():
    metadata = json.loads((REPO / "model" / "metadata.json").read_text())
    metadata["version"] = "0.0.1-test"
    assert "v0.0.1-test" in figures_table(metadata)
