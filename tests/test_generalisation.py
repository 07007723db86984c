"""The training levers for films from other hospitals, on synthetic films: box-free close-ups,
the framings and intensity remapping of the live augmentation, MixStyle, the epoch plan and the
off-source figures."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_radiograph
from training.augment import (
    CLASSIC_AUGMENTATION,
    add_collimation,
    box_free_matrix,
    box_free_view,
    random_view,
    remap_intensity,
    stretch_matrix,
    warp,
)

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


@pytest.mark.parametrize("seed", range(10))
def test_the_classic_ablation_draws_none_of_the_source_framings(seed):
    """--augmentation classic: no stretch, collimation or intensity network, while the views
    keep their boxes and the box-free close-ups still work."""
    image, mask = film_and_box(seed % 3)
    rng = np.random.default_rng(seed)
    assert np.array_equal(stretch_matrix(SIZE, rng, CLASSIC_AUGMENTATION), np.eye(3))
    assert np.array_equal(add_collimation(image, rng, CLASSIC_AUGMENTATION), image)
    assert np.array_equal(remap_intensity(image, rng, CLASSIC_AUGMENTATION), image)
    view, view_mask = random_view(image, mask, np.random.default_rng(seed), CLASSIC_AUGMENTATION)
    assert view.shape == image.shape and view_mask is not None and view_mask.sum() >= 0.5 * mask.sum()
    free = box_free_view(image, mask, np.random.default_rng(seed), CLASSIC_AUGMENTATION)
    assert free is not None and free.shape == image.shape


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


def test_a_candidate_is_scored_at_its_own_validation_threshold():
    from training.finetune import with_selection_score

    # Validation: 3 healthy and 3 fractured FracAtlas films, P(any fracture) 0.1-0.3 against
    # 0.6-0.8: the Youden threshold is the lowest fracture's, 0.6; a web film does not count.
    p_any = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.05])
    log_probs = np.log(np.stack([1 - p_any, p_any * 0.9, p_any * 0.1], axis=1))
    labels = np.array([0, 0, 0, 1, 1, 2, 1])
    sources = np.array(["fracatlas"] * 6 + ["bone_break"])
    p_checks = {"hbfmid_check": np.array([0.9, 0.65]), "knee_oai": np.array([0.1, 0.5, 0.95]),
                "wrist_check": np.array([0.2, 0.4])}
    check_labels = {"hbfmid_check": ["fractured", "fractured"], "knee_oai": ["healthy"] * 3,
                    "wrist_check": ["healthy"] * 2}
    val = {"fracatlas_auroc": 0.9, "severity_auroc": 0.7, "score": 0.8}
    row = with_selection_score(dict(val), labels, sources, log_probs, p_checks, check_labels)
    assert row["val_fracture_threshold"] == pytest.approx(0.6)
    assert row["knee_oai_below_threshold"] == pytest.approx(2 / 3)  # 0.95 is above it
    assert row["wrist_check_below_threshold"] == 1.0
    assert row["offsource_auroc"] == pytest.approx(4 / 6)  # knees: 0.95 outranks both fractures
    assert row["val_only_score"] == 0.8
    assert row["hbfmid_recall_at_threshold"] == 1.0
    assert row["score"] == pytest.approx((0.9 + 0.7 + 4 / 6 + 2 / 3) / 4)
    alone = with_selection_score(dict(val), labels, sources, log_probs, {}, {})
    assert alone["score"] == pytest.approx(0.8) and "offsource_auroc" not in alone


def test_only_the_first_knees_are_scored_and_the_loaded_checks_stay_whole():
    from training.offsource import first_knees

    checks = {"knee_oai": {"images": np.arange(5), "labels": ["healthy"] * 5},
              "wrist_check": {"images": np.arange(3), "labels": ["healthy"] * 3}}
    subset = first_knees(checks, 2)
    assert subset["knee_oai"]["images"].tolist() == [0, 1] and subset["knee_oai"]["labels"] == ["healthy"] * 2
    assert subset["wrist_check"] is checks["wrist_check"]
    assert len(checks["knee_oai"]["images"]) == 5
    assert first_knees({"wrist_check": checks["wrist_check"]}, 2) == {"wrist_check": checks["wrist_check"]}


TWO_STAGE = {"rule": "two_stage", "fracture_threshold": 0.4, "fracture_band": 0.5,
             "severity_threshold": 0.6, "severity_margin": 0.5}


def three(p_any: float, p_severe: float) -> np.ndarray:
    from training.model import two_stage_probabilities

    return two_stage_probabilities(np.array([p_any]), np.array([p_severe]))[0]


def test_the_two_stage_verdict_decides_fracture_first_then_severity():
    from utils.core.inference import decide

    assert decide(three(0.1, 0.99), TWO_STAGE) == ("healthy", False)  # severity is not asked of a healthy film
    assert decide(three(0.9, 0.2), TWO_STAGE) == ("fractured", False)
    assert decide(three(0.95, 0.9), TWO_STAGE) == ("beyond_repair", False)


def test_the_fracture_threshold_and_band_at_their_edges():
    from utils.core.inference import decide, logit

    t, band = TWO_STAGE["fracture_threshold"], TWO_STAGE["fracture_band"]
    assert decide(three(t, 0.0), TWO_STAGE)[0] == "fractured"  # at the threshold: a fracture
    assert decide(three(np.nextafter(t, 0), 0.0), TWO_STAGE)[0] == "healthy"
    inside = 1 / (1 + np.exp(-(logit(t) + band * 0.99)))
    outside = 1 / (1 + np.exp(-(logit(t) + band * 1.01)))
    below = 1 / (1 + np.exp(-(logit(t) - band * 1.01)))
    assert decide(three(inside, 0.0), TWO_STAGE) == ("fractured", True)
    assert decide(three(outside, 0.0), TWO_STAGE) == ("fractured", False)
    assert decide(three(below, 0.0), TWO_STAGE) == ("healthy", False)
    assert decide(three(outside, 0.65), {**TWO_STAGE, "severity_threshold": 0.6})[1] is True  # severity margin
    assert decide(three(0.99, 0.75), TWO_STAGE) == ("beyond_repair", False)


@pytest.mark.parametrize("seed", range(5))
def test_a_film_most_probably_healthy_is_never_called_beyond_repair(seed):
    from utils.core.inference import decide

    rng = np.random.default_rng(seed)
    low_threshold = {**TWO_STAGE, "fracture_threshold": 0.05, "severity_threshold": 0.1}
    for p_any, p_severe in rng.random((500, 2)):
        probs = three(p_any, p_severe)
        label, _ = decide(probs, low_threshold)
        if int(np.argmax(probs)) == 0:
            assert label != "beyond_repair"


def test_two_stage_presets_are_fitted_on_validation():
    from training.calibrate import two_stage_presets

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300, int), np.ones(80, int), np.full(20, 2)]
    p_any = np.clip(np.where(labels > 0, rng.beta(5, 2, labels.size), rng.beta(2, 5, labels.size)), 0.01, 0.99)
    p_severe = np.where(labels == 2, rng.beta(5, 2, labels.size), rng.beta(2, 5, labels.size))
    from training.model import two_stage_probabilities

    probs = two_stage_probabilities(p_any, p_severe)
    presets = two_stage_presets(probs, labels, np.ones(labels.size, bool))
    balanced, sensitive = presets["balanced"], presets["fracture_sensitive"]
    assert balanced["rule"] == sensitive["rule"] == "two_stage"
    assert sensitive["fracture_threshold"] <= balanced["fracture_threshold"]
    assert ((p_any >= sensitive["fracture_threshold"])[labels > 0]).mean() >= 0.95
    assert 0 <= balanced["fracture_band"] <= 3 and 0 <= balanced["severity_margin"] <= 1.0
    assert sensitive["fracture_band"] == balanced["fracture_band"]
    assert balanced["val_covered_accuracy"] >= 0.9 or balanced["fracture_band"] == 3.0


def synthetic_films(count: int, seed: int) -> list[tuple[str, bytes]]:
    from tests.conftest import png_bytes

    rng = np.random.default_rng(seed)
    films = []
    for i in range(count):
        film = synthetic_radiograph(int(rng.integers(300, 600)), int(rng.integers(250, 500)), seed=seed * 1000 + i)
        films.append((f"film{i}.png", png_bytes((film * 255).astype(np.uint8))))
    return films


def test_the_radiograph_guard_passes_radiograph_like_films_and_flags_photos(classifier, tmp_path):
    from training.non_radiographs import make_non_radiographs
    from training.radiograph_guard import features_of, fit_guard, inputs_of
    from utils.core.guard import NOT_RADIOGRAPH_MESSAGE, RadiographGuard, load_guard

    size = classifier.bundle.input_size

    def features(items):
        return features_of(classifier, inputs_of(items, size))

    films, others = features(synthetic_films(40, 1)), features(
        [(n, b) for n, _, b in make_non_radiographs(40, 11)])
    guard = fit_guard(films, others, features(synthetic_films(20, 2)))
    held_out_films = features(synthetic_films(20, 3))
    photos = features([(n, b) for n, k, b in make_non_radiographs(40, 12) if k in ("photo", "document")])
    assert guard.is_outlier(held_out_films).mean() <= 0.1
    assert guard.is_outlier(photos).mean() >= 0.9
    guard.save(tmp_path / "guard.npz")
    loaded = load_guard(tmp_path / "guard.npz")
    assert isinstance(loaded, RadiographGuard) and loaded.message == NOT_RADIOGRAPH_MESSAGE
    np.testing.assert_allclose(loaded.distance(photos), guard.distance(photos), rtol=1e-5)


def test_offsource_aurocs_report_the_worst_source_and_the_pooled_figure():
    """A model that ranks fractures above wrists but below knees: the worst source is the knees'
    0.0, and the pooled figure sits between, weighted by the pool's sizes."""
    from training.offsource import offsource_aurocs

    p = {"hbfmid_check": np.array([0.5, 0.6]), "knee_oai": np.array([0.9, 0.95, 0.99]),
         "wrist_check": np.array([0.1])}
    labels = {"hbfmid_check": ["fractured", "fractured"]}
    figures = offsource_aurocs(p, labels)
    assert figures["auroc_vs_knee_oai"] == 0.0 and figures["auroc_vs_wrist_check"] == 1.0
    assert figures["offsource_auroc"] == 0.0
    assert figures["auroc_pooled"] == 0.25  # each fracture outranks 1 of the 4 healthy films
