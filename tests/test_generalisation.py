"""The training levers for films from other hospitals, on synthetic films: box-free close-ups,
the framings and intensity remapping of the live augmentation, MixStyle, the epoch plan and the
off-source figures."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_radiograph
from training.augment import add_collimation, box_free_matrix, box_free_view, remap_intensity, stretch_matrix, warp

SIZE = 128


def film_and_box(seed: int = 0, box=(50, 70, 30, 50)) -> tuple[np.ndarray, np.ndarray]:
    image = (synthetic_radiograph(SIZE, SIZE, seed=seed) * 255).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = True
    image[mask] = 255  # the "fracture": bright, so a view that shows any of it is caught
    return image, mask


@pytest.mark.parametrize("seed", range(20))
def test_a_box_free_close_up_never_overlaps_a_box(seed):
    image, mask = film_and_box(seed % 3)
    matrix = box_free_matrix(mask, np.random.default_rng(seed))
    assert matrix is not None
    assert not warp(mask.astype(np.uint8), matrix, nearest=True).any()
    # The close-up magnifies (a part of the film, not the whole of it).
    assert abs(np.linalg.det(matrix[:, :2])) > 1.8 ** 2 * 0.99
    view = box_free_view(image, mask, np.random.default_rng(seed))
    assert view is not None and view.shape == image.shape and view.dtype == np.uint8


def test_a_film_covered_by_its_box_gives_no_box_free_view():
    image, _ = film_and_box()
    assert box_free_view(image, np.ones((SIZE, SIZE), bool), np.random.default_rng(0)) is None


def test_the_stretch_scales_one_axis_about_the_centre():
    spec = {"stretch": {"p": 1.0, "log_range": (np.log(1.4), np.log(1.4))}}
    matrix = stretch_matrix(SIZE, np.random.default_rng(0), spec)
    scales = sorted([matrix[0, 0], matrix[1, 1]])
    assert scales == pytest.approx([1.0, 1.4])
    centre = matrix @ np.array([SIZE / 2, SIZE / 2, 1.0])
    assert centre[:2] == pytest.approx([SIZE / 2, SIZE / 2])
    assert np.array_equal(stretch_matrix(SIZE, np.random.default_rng(0), {"stretch": {"p": 0.0}}), np.eye(3))


def test_collimation_paints_flat_bands_at_the_edges_only():
    image, _ = film_and_box()
    spec = {"collimation": {"p": 1.0, "width_frac": (0.1, 0.1)}}
    for seed in range(10):
        view = add_collimation(image, np.random.default_rng(seed), spec)
        changed = view != image
        inner = changed[13:-13, 13:-13]
        assert changed.any() and not inner.any()
        assert len(np.unique(view[changed])) == 1  # one flat shutter value


def test_intensity_remapping_keeps_structure_and_changes_grey_levels():
    image, _ = film_and_box()
    spec = {"intensity_network": {"p": 1.0, "hidden": 4}}
    views = [remap_intensity(image, np.random.default_rng(seed), spec) for seed in range(12)]
    for view in views:
        assert view.shape == image.shape and view.dtype == np.uint8
        assert not np.array_equal(view, image)
    # Most remapped films still show the film (a random network may invert or scramble a few).
    correlations = [abs(np.corrcoef(v.ravel(), image.ravel())[0, 1]) for v in views]
    assert np.median(correlations) > 0.5
    assert not np.array_equal(views[0], views[1])
    assert remap_intensity(image, np.random.default_rng(0), {"intensity_network": {"p": 0.0}}) is image


def test_mixstyle_keeps_content_and_swaps_statistics():
    import tensorflow as tf

    from training.finetune import mix_style

    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(8, 6, 6, 5)) * rng.uniform(0.5, 3, (8, 1, 1, 5))
                           + rng.uniform(-2, 2, (8, 1, 1, 5)), tf.float32)
    mixed = mix_style(features).numpy()
    assert mixed.shape == features.shape and np.isfinite(mixed).all()
    # Per image and channel the pattern is the same up to scale and shift: correlation 1.
    f = features.numpy()
    for i in range(8):
        for c in range(5):
            assert np.corrcoef(f[i, ..., c].ravel(), mixed[i, ..., c].ravel())[0, 1] > 0.999
    assert not np.allclose(mixed.mean(axis=(1, 2)), f.mean(axis=(1, 2)), atol=1e-3)


def test_the_epoch_plan_repeats_boxed_fractures_as_box_free_views_and_keeps_extra_negatives():
    from training.finetune import epoch_order, stage_targets

    labels = np.array([0] * 10 + [1] * 4 + [2] * 2 + [0] * 3)
    clinical = np.array([True] * 14 + [False] * 2 + [True] * 3)
    extra = np.array([False] * 16 + [True] * 3)
    boxed = np.array([10, 11, 12, 13])
    order, free = epoch_order(labels, clinical & ~extra, 5, 0, np.random.default_rng(0), boxed, 0.5, extra)
    assert free.sum() == 2 and set(order[free]) <= set(boxed)
    assert set(range(10, 19)) <= set(order)  # every fracture, beyond repair and extra negative
    assert (labels[order[~free]] == 0).sum() == 5 + 3
    targets = stage_targets(labels[order], clinical[order], 2.0, 0.0, ~free)
    assert (targets["fracture"][free] == 0).all() and (targets["fracture_w"][free] == 1).all()
    assert (targets["severity_w"][free] == 0).all()


def test_off_source_auroc_is_the_worst_healthy_source():
    from training.offsource import epoch_figures, selection_score

    p = {"hbfmid_check": np.array([0.9, 0.8, 0.7, 0.1]),
         "knee_oai": np.array([0.2, 0.3, 0.1]), "wrist_check": np.array([0.85, 0.75, 0.2])}
    labels = {"hbfmid_check": ["fractured", "fractured", "beyond_repair", "healthy"],
              "knee_oai": ["healthy"] * 3, "wrist_check": ["healthy"] * 3}
    figures = epoch_figures(p, labels, threshold=0.5)
    assert figures["auroc_vs_knee_oai"] == 1.0
    assert figures["auroc_vs_wrist_check"] == pytest.approx(6 / 9)
    assert figures["offsource_auroc"] == pytest.approx(6 / 9)
    assert figures["knee_oai_below_threshold"] == 1.0 and figures["wrist_check_below_threshold"] == pytest.approx(1 / 3)
    assert figures["hbfmid_recall_at_threshold"] == 1.0
    val = {"fracatlas_auroc": 0.9, "severity_auroc": 0.8}
    assert selection_score(val, figures) == pytest.approx((0.9 + 0.8 + 6 / 9 + 1 / 3) / 4)
    assert selection_score(val, None) == pytest.approx(0.85)
