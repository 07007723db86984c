"""A fix for Streamlit itself, which app.py applies once per server process.

Streamlit 1.67 drops the answer to a browser's upload-URL request when a script run starts
before that answer left the server: `ForwardMsgQueue.clear(retain_lifecycle_msgs=True)`, which
each new run calls, keeps only the run's lifecycle messages. The browser then never gets the
URL, never sends the file, and waits for ever: the upload is lost without a word. Under load
(ten or more sessions on two cores, where the event loop flushes late) this lost several
uploads in every five minutes of the load benchmark. The answer belongs to no run, so it is
never stale: keeping it is always right, and this module keeps it.
"""

from __future__ import annotations

import functools
from typing import Any

from streamlit.runtime.forward_msg_queue import ForwardMsgQueue

# Answers to a browser's requests: they belong to no script run, so no run may clear them.
KEPT_ANSWERS = frozenset({"file_urls_response"})


def keep_upload_answers(queue_class: Any = ForwardMsgQueue) -> None:
    """Make queue_class.clear keep pending KEPT_ANSWERS when a run clears the queue (idempotent)."""
    original = queue_class.clear
    if getattr(original, "keeps_upload_answers", False):
        return

    @functools.wraps(original)
    def clear(self: Any, retain_lifecycle_msgs: bool = False, fragment_ids_this_run: list[str] | None = None) -> None:
        # flush() clears without retaining, after it has taken every message: nothing to keep then.
        kept = [m for m in self._queue if m.WhichOneof("type") in KEPT_ANSWERS] if retain_lifecycle_msgs else []
        original(self, retain_lifecycle_msgs, fragment_ids_this_run)
        if kept:
            self._queue = [*kept, *(m for m in self._queue if m.WhichOneof("type") not in KEPT_ANSWERS)]

    clear.keeps_upload_answers = True  # type: ignore[attr-defined]
    queue_class.clear = clear
