"""The review rules a bundle ships: when the model must not answer (input limits, the shift
score, the presets re-derived after them), fitted on training and validation films from the
serving path's outputs. `python -m training.review.features`, then `training.review.rules`."""
