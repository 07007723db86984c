"""This session's verdicts, listed in the sidebar; kept in the session only, never on disk."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from utils.core.verdict import verdict_style


def pretty(label: str) -> str:
    return label.replace("_", " ")


def clear_history() -> None:
    st.session_state["history"] = []


def history_verdict(entry: dict) -> str:
    if entry.get("flag") == "unfamiliar":
        return "unlike the training films (uncertain)"
    if entry.get("not_xray"):
        return "not a radiograph? (uncertain)"
    return f"**{pretty(entry['label'])}**" + (" (uncertain)" if entry.get("uncertain") else "")


def show_history(box) -> None:
    """Filled at the end of a run, so it lists this run's verdicts too."""
    history = st.session_state.get("history", [])
    with box:
        st.header(f"This session ({len(history)})")
        if history:
            st.markdown("\n".join(f"- {h['time']} {h['name']}: {history_verdict(h)}" for h in history[-50:]))
            st.button("Clear history", on_click=clear_history)
        else:
            st.caption("Verdicts of this session appear here; nothing is kept after you leave.")


def record_history(name: str, prediction) -> None:
    if prediction.label:
        st.session_state.setdefault("history", []).append(
            {
                "time": dt.datetime.now().strftime("%H:%M:%S"),
                "name": name,
                "label": prediction.label,
                "uncertain": prediction.uncertain,
                "not_xray": prediction.not_xray is not None,
                "flag": verdict_style(prediction.label, prediction.uncertain, prediction.not_xray).kind,
            }
        )
