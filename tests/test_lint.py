"""The CI workflow and the Dockerfile pass their linters (actionlint, hadolint), installed from PyPI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO


def linter(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -r requirements-dev.txt")
    return path


def test_the_workflow_passes_actionlint():
    workflow = REPO / ".github" / "workflows" / "ci.yml"
    result = subprocess.run([linter("actionlint"), "-no-color", str(workflow)], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([linter("hadolint"), "--no-color", str(REPO / "Dockerfile")], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linters_do_find_errors(tmp_path):
    """Guards the two tests above: each linter fails on a file with a known mistake."""
    bad_workflow = tmp_path / "bad.yml"
    bad_workflow.write_text("on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n"
                            "      - run: echo ${{ github.event.nonexistent_context_key.x }\n")
    assert subprocess.run([linter("actionlint"), "-no-color", str(bad_workflow)], capture_output=True).returncode != 0
    bad_dockerfile = tmp_path / "Dockerfile"
    bad_dockerfile.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\nCMD python app.py\n")
    assert subprocess.run([linter("hadolint"), "--no-color", str(bad_dockerfile)], capture_output=True).returncode != 0


def test_the_workflow_runs_the_readme_test_command_and_checks_health():
    text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert "bash scripts/test.sh" in text and 'python-version: "3.11"' in text and "cache: pip" in text
    assert "/_stcore/health" in text and "ghcr.io" in text and "refs/tags/v" in text


def test_the_python_code_passes_ruff():
    """pyproject.toml's rules: pyflakes, pycodestyle, isort, bugbear, pyupgrade, complexity,
    arguments and statements per function, imports at the top."""
    result = subprocess.run([linter("ruff"), "check", "--no-cache", "--output-format", "concise", "."],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_python_code_keeps_ruff_format_layout():
    folders = ["utils", "ui", "training", "benchmarks", "scripts", "pages", "fixtures", "app.py"]
    result = subprocess.run([linter("ruff"), "format", "--no-cache", "--check", *folders], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_folder_passes_mypy():
    """Strict on utils/core/; checked function bodies in the rest of utils/, ui/, app.py, pages/,
    training/, benchmarks/, fixtures/ and scripts/ (pyproject.toml's files)."""
    checked = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    assert {"utils", "ui", "app.py", "pages", "training", "benchmarks", "fixtures", "scripts"} <= set(checked)
    result = subprocess.run([linter("mypy"), "--no-incremental"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_and_mypy_do_find_errors(tmp_path):
    """Guards the tests above: each fails on a file with a known mistake, under the project's settings."""
    bad = tmp_path / "utils" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("import os\n\n\ndef half(value):\n    return value / 2\n")
    for folder in (tmp_path / "utils", bad.parent):
        (folder / "__init__.py").write_text("")
    config = ["--config", str(REPO / "pyproject.toml")]
    ruff = subprocess.run([linter("ruff"), "check", "--no-cache", *config, str(bad)], capture_output=True, text=True)
    assert ruff.returncode != 0 and "F401" in ruff.stdout
    mypy = subprocess.run([linter("mypy"), "--no-incremental", "--config-file", str(REPO / "pyproject.toml"),
                           "utils"], capture_output=True, text=True, cwd=tmp_path)
    assert mypy.returncode != 0 and "no-untyped-def" in mypy.stdout, mypy.stdout
