"""Shut down the sessions whose browsers left, once Streamlit's reconnection grace ends.

Streamlit keeps a disconnected session for `server.disconnectedSessionTTL` seconds (120 by
default) so that a browser that reconnects finds its page as it was. When that time runs out
the session is only dropped from Streamlit's store: it is never shut down, so the files it
uploaded and the images it showed stay in the server's memory, and its films with them. The
sweeper remembers each session that ran the app and shuts down those the server no longer
knows, on every script run and every SWEEP_SECONDS from a background thread.

It uses Streamlit's runtime internals (its session manager); if they change, the app warns in
the server log once and goes on without sweeping, and tests/test_sessions.py fails.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

SWEEP_SECONDS = 30.0
log = logging.getLogger("bone-xray")


class SessionSweeper:
    def __init__(self, interval: float = SWEEP_SECONDS) -> None:
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._broken = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), name="session-sweeper", daemon=True)
        self._thread.start()

    def _manager(self) -> Any:
        return runtime.get_instance()._session_mgr

    def register_current(self) -> None:
        """Remember the session running this script, then sweep."""
        context = get_script_run_ctx(suppress_warning=True)
        if context is None or self._broken or not runtime.exists():
            return
        try:
            info = self._manager().get_session_info(context.session_id)
            if info is not None:
                with self._lock:
                    self._sessions[context.session_id] = info.session
        except Exception as exc:  # Streamlit's internals moved: no sweeping, the app goes on
            self._give_up(exc)
        self.sweep()

    def sweep(self) -> int:
        """Shut down the remembered sessions the server no longer holds; returns how many."""
        if self._broken or not runtime.exists():
            return 0
        try:
            manager = self._manager()
            with self._lock:
                gone = {sid: s for sid, s in self._sessions.items() if manager.get_session_info(sid) is None}
                for sid in gone:
                    del self._sessions[sid]
            for session in gone.values():
                session.shutdown()  # drops its uploaded files and its images
            if gone:
                print(f"bone-xray: shut down {len(gone)} session(s) whose browsers left", flush=True)
            return len(gone)
        except Exception as exc:
            self._give_up(exc)
            return 0

    def _give_up(self, exc: Exception) -> None:
        if not self._broken:
            log.warning("bone-xray: sessions that ended cannot be swept (%s: %s)", type(exc).__name__, exc)
        self._broken = True

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sweep()

    def tracked(self) -> int:
        with self._lock:
            return len(self._sessions)
