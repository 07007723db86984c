"""The container's health check: the server answers, and the model bundle it serves is intact.

Usage: python -m ui.healthcheck [--url http://127.0.0.1:8501] [--model-dir DIR]

Streamlit's own /_stcore/health says only that the server runs; a server whose model is
missing or damaged still answers "ok" there (and its page shows the error). This check also
verifies every bundle file against metadata.json, as the app does when it loads the model, so
that Docker's HEALTHCHECK or an orchestrator's exec probe marks such a container unhealthy.
Exit 0 when healthy; else 1, with one line on stderr saying what is wrong.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

from utils.core.bundle import ModelBundleError, bundle_dir, load_bundle

DEFAULT_URL = "http://127.0.0.1:8501"


def problem(url: str, model_dir: Path | None) -> str | None:
    """What makes the server unhealthy, or None."""
    try:
        load_bundle(model_dir, load_keras=False)
    except ModelBundleError as exc:
        return f"the model bundle cannot be served: {exc}"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/_stcore/health", timeout=4) as response:
            body = response.read().strip()
    except OSError as exc:
        return f"the server at {url} does not answer ({exc})"
    return None if body == b"ok" else f"the server at {url} reports {body[:80]!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--model-dir", type=Path, default=None, help=f"default: {bundle_dir()}")
    args = parser.parse_args(argv)
    found = problem(args.url, args.model_dir)
    if found:
        print(f"unhealthy: {found}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
