"""The web app's limits, in one place (the largest upload is Streamlit's own setting:
`server.maxUploadSize` in .streamlit/config.toml, 100 MB). The README lists them."""

from __future__ import annotations

# Verdicts a session's history keeps (and lists); beyond it the oldest are dropped, and the list says so.
HISTORY_LIMIT = 50
# Files classified from one upload (a folder can hold thousands); the rest get a sentence.
BATCH_FILE_LIMIT = 200
# Films decoded and classified together, and how many such chunks run at once across all
# sessions: every session queues for a slot per chunk, first come first served, so that
# twenty simultaneous batches hold at most INFERENCE_SLOTS chunks of decoded films in memory
# and a single film waits for at most a chunk of someone else's batch.
BATCH_SIZE = 8
INFERENCE_SLOTS = 2
