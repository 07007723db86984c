"""The upload answer Streamlit dropped: reproduced on Streamlit's own message queue, then kept."""

from __future__ import annotations

import inspect

import pytest
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.runtime.forward_msg_queue import ForwardMsgQueue

from ui.streamlit_fixes import keep_upload_answers


def upload_answer(request_id: str) -> ForwardMsg:
    msg = ForwardMsg()
    msg.file_urls_response.response_id = request_id
    return msg


def run_finished() -> ForwardMsg:
    msg = ForwardMsg()
    msg.script_finished = ForwardMsg.FINISHED_SUCCESSFULLY
    return msg


class UnpatchedQueue(ForwardMsgQueue):
    """Streamlit's queue as it ships, also when an app test in this process applied the fix."""

    clear = inspect.unwrap(ForwardMsgQueue.clear)


def pending_when_a_run_starts(queue_class) -> list[str]:
    """What a run's start leaves of [a finished run's message, an upload answer] (AppSession
    calls clear(retain_lifecycle_msgs=True) on SCRIPT_STARTED)."""
    queue = queue_class()
    queue.enqueue(run_finished())
    queue.enqueue(upload_answer("req-1"))
    queue.clear(retain_lifecycle_msgs=True)
    return [m.WhichOneof("type") for m in queue.flush()]


def test_streamlit_as_shipped_drops_the_upload_answer_when_a_run_starts():
    """The fault behind the unanswered uploads: the browser never learns where to send the file."""
    assert "file_urls_response" not in pending_when_a_run_starts(UnpatchedQueue)


def test_the_fix_keeps_the_upload_answer_and_the_lifecycle_messages():
    class Fixed(ForwardMsgQueue):
        pass

    keep_upload_answers(Fixed)
    left = pending_when_a_run_starts(Fixed)
    assert left.count("file_urls_response") == 1 and "script_finished" in left


def test_flush_still_empties_the_queue_and_the_fix_applies_once():
    class Fixed(ForwardMsgQueue):
        pass

    keep_upload_answers(Fixed)
    patched = Fixed.clear
    keep_upload_answers(Fixed)
    assert Fixed.clear is patched
    queue = Fixed()
    queue.enqueue(upload_answer("req-2"))
    assert [m.WhichOneof("type") for m in queue.flush()] == ["file_urls_response"]
    assert queue.flush() == [] and queue.is_empty()


@pytest.mark.usefixtures("bundle_dir")
def test_the_app_applies_the_fix_to_streamlits_queue(monkeypatch, bundle_dir):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO

    monkeypatch.setattr(ForwardMsgQueue, "clear", ForwardMsgQueue.clear)  # restored after the test
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert getattr(ForwardMsgQueue.clear, "keeps_upload_answers", False)
