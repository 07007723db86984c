"""This session's verdicts, listed in the sidebar; kept in the session only, never on disk."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from ui import settings
from utils.core.verdict import verdict_style


def pretty(label: str) -> str:
    return label.replace("_", " ")


def clear_history() -> None:
    st.session_state["history"] = []
    st.session_state["history_total"] = 0


def history_verdict(entry: dict) -> str:
    if entry.get("flag") == "unfamiliar":
        return "unlike the training films (uncertain)"
    if entry.get("not_xray"):
        return "not a radiograph? (uncertain)"
    return f"**{pretty(entry['label'])}**" + (" (uncertain)" if entry.get("uncertain") else "")


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


def record_history(name: str, prediction) -> None:
    """Add a verdict; a session keeps at most HISTORY_LIMIT (ui.settings), dropping the oldest."""
    if prediction.label:
        history = st.session_state.setdefault("history", [])
        st.session_state["history_total"] = st.session_state.get("history_total", len(history)) + 1
        history.append(
            {
                "time": dt.datetime.now().strftime("%H:%M:%S"),
                "name": name,
                "label": prediction.label,
                "uncertain": prediction.uncertain,
                "not_xray": prediction.not_xray is not None,
                "flag": verdict_style(prediction.label, prediction.uncertain, prediction.not_xray).kind,
            }
        )
        del history[: -settings.HISTORY_LIMIT]
