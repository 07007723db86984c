"""A PDF report in two steps: one button builds it, a download button then serves it.

Why not `st.download_button` with a callable: Streamlit stores the file that callable builds
without tying it to any session, and the end of any session's next two script runs deletes it.
With several people at once the browser's request for it often comes too late and the download
is cancelled (measured with `python -m benchmarks.load`: a 404 on the PDF). Bytes given to the
download button itself belong to this session's page, so they stay until the page changes.

The session keeps one built report at most, and drops it once the films, the preset or the
reference it was built for change.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import streamlit as st

READY = "pdf_report_ready"


def pdf_download(label: str, key: str, made_for: Hashable, build: Callable[[], bytes], file_name: str) -> None:
    """`label` builds the report (`build()`, with a spinner); once built for `made_for` (which
    names its films, so a single film's report and a batch's never match), a download button
    for it stands in the button's place. `key` names the two widgets."""
    ready = st.session_state.get(READY)
    slot = st.empty()
    if not (ready and ready["made_for"] == made_for):
        if not slot.button(label, key=f"build_{key}"):
            return
        st.session_state.pop(READY, None)  # the old report is let go before the new one is built
        with st.spinner("Building the PDF report..."):
            ready = {"made_for": made_for, "data": build()}
        st.session_state[READY] = ready
    slot.download_button(
        f"Download {label}",
        ready["data"],
        file_name=file_name,
        mime="application/pdf",
        key=f"download_{key}",
        on_click="ignore",
        type="primary",
    )
