"""The load benchmark's short version: five people at once for about a minute, in real browsers.

The long run (N = 1, 5, 10, 20 for five minutes each) is `python -m benchmarks.load`; this one
asserts what must hold at any load: every upload is answered, no session is dropped, and the
server logs no traceback.
"""

import os

import pytest

from benchmarks.load import film_mix, measure_level
from fixtures.films import CHROMIUM
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian chromium is not installed (scripts/test.sh installs it)")

SESSIONS = 5


def test_five_sessions_for_a_minute_lose_nothing():
    figures = measure_level(SESSIONS, 60.0, film_mix(), REPO)
    assert figures["errors"] == 0, figures["error_examples"]
    assert figures["dropped_sessions"] == 0
    assert figures["server_tracebacks"] == 0
    assert figures["uploads"] >= SESSIONS, "each session has at least one answer"
    assert set(figures["per_kind"]) >= {"jpeg_5mp", "broken"}, "the mix reached the big and the broken film"
