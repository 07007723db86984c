"""This session's verdicts, listed in the sidebar; kept in the session only, never on disk."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from ui import settings
from utils.core.verdict import verdict_words


def pretty(label: str) -> str:
    return label.replace("_", " ")


def clear_history() -> None:
    st.session_state["history"] = []
    st.session_state["history_total"] = 0


def history_verdict(entry: dict) -> str:
    """The verdict as it was given, with the preset that gave it (a later preset change does
    not rewrite the history)."""
    words = f"**{verdict_words(entry['verdict'])}**"
    if entry["verdict"] != entry["label"]:
        words += f" (leans to {pretty(entry['label'])})"
    return f"{words}, {pretty(entry['preset'])} preset"


def show_history(box) -> None:
    """Filled at the end of a run, so it lists this run's verdicts too."""
    history = st.session_state.get("history", [])
    total = st.session_state.get("history_total", len(history))
    with box:
        st.header(f"This session ({total})")
        if history:
            st.markdown("\n".join(f"- {h['time']} {h['name']}: {history_verdict(h)}" for h in history))
            if total > len(history):
                st.caption(
                    f"A session keeps its latest {settings.HISTORY_LIMIT} verdicts; the {total - len(history)} "
                    "older ones were dropped."
                )
            st.button("Clear history", on_click=clear_history)
        else:
            st.caption("Verdicts of this session appear here; nothing is kept after you leave.")


def record_history(name: str, prediction, preset_name: str) -> None:
    """Add a verdict; a session keeps at most HISTORY_LIMIT (ui.settings), dropping the oldest."""
    verdict = prediction.verdict
    if verdict is not None:
        history = st.session_state.setdefault("history", [])
        st.session_state["history_total"] = st.session_state.get("history_total", len(history)) + 1
        history.append(
            {
                "time": dt.datetime.now().strftime("%H:%M:%S"),
                "name": name,
                "label": verdict.label,
                "verdict": verdict.kind,
                "review_reasons": list(verdict.reasons),
                "preset": preset_name,
            }
        )
        del history[: -settings.HISTORY_LIMIT]
