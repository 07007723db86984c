"""Bone X-ray Classifier: the core (utils.core), the adapters (utils.adapters) and the edges
(utils.cli, utils.report). See docs/architecture.md."""
