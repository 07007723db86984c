"""Bone X-ray Classifier: the core (utils.core), the adapters (utils.adapters: ways in and out,
the writers and the PDF report among them) and the command line (utils.cli), a thin table of
commands. See docs/architecture.md."""
