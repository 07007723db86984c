"""The app's stated limits (ui/settings.py): a capped batch and a capped history each say so
in a sentence, and the app goes on working."""

from __future__ import annotations

import numpy as np

from tests.conftest import png_bytes, synthetic_radiograph


def films(count: int) -> list[tuple[str, bytes, str]]:
    return [
        (f"film{i:03d}.png", png_bytes((synthetic_radiograph(96, 80, seed=i) * 255).astype(np.uint8)), "image/png")
        for i in range(count)
    ]


def test_a_batch_beyond_the_file_limit_is_cut_with_a_sentence(app, monkeypatch):
    monkeypatch.setattr("ui.settings.BATCH_FILE_LIMIT", 3)
    app.file_uploader[0].set_value(films(5))
    app.run()
    assert not app.exception
    assert any("5 files were given; the first 3 are classified" in i.value for i in app.info)
    assert len(app.dataframe[0].value) == 3


def test_the_history_keeps_its_latest_verdicts_and_says_how_many_were_dropped(app, monkeypatch):
    monkeypatch.setattr("ui.settings.HISTORY_LIMIT", 4)
    app.file_uploader[0].set_value(films(6))
    app.run()
    assert not app.exception
    sidebar = [m.value for m in app.sidebar.markdown]
    listed = [line for text in sidebar for line in text.splitlines() if line.startswith("- ") and ".png" in line]
    assert [line.split()[2].rstrip(":") for line in listed] == [f"film{i:03d}.png" for i in range(2, 6)]
    assert app.sidebar.header[-1].value == "This session (6)"
    assert any("keeps its latest 4 verdicts; the 2 older ones were dropped" in c.value for c in app.sidebar.caption)
