"""The equivalence check's table and what --write leaves in the bundle when no candidate passes."""

import json

from training.release.equivalence import CARD_MARKER, INT8_FILE, markdown, write_float32_only


def engine_result(passed: bool | None) -> dict:
    result = {
        "timing_ms_per_image": {"batch_1": 90.0, "batch_8": 80.0},
        "binary_auroc_test": 0.89,
        "binary_auroc_test_fracatlas": 0.877,
        "ece_test": 0.04,
        "temperature": 0.7,
        "own_temperature": False,
    }
    if passed is None:  # the float32 reference
        return result
    block = {
        "verdict_agreement": {"balanced": 0.983, "fracture_sensitive": 0.99},
        "uncertain_agreement": {"balanced": 0.97, "fracture_sensitive": 0.98},
        "not_xray_agreement": 1.0,
    }
    passes = {"auroc_delta": True, "verdict_agreement": passed, "ece": True, "flag_agreement": passed}
    return {**result, "agreement": {"test": block, "knee": block}, "passes": passes, "passed": passed}


def test_the_table_marks_the_reference_and_names_what_a_candidate_failed():
    table = markdown(
        {"float32 (shipped)": engine_result(None), "int8": engine_result(False)}, {"test": 782, "knee": 1000}
    )
    rows = [line for line in table.splitlines() if line.startswith("| float32") or line.startswith("| int8")]
    assert rows[0].endswith("| reference |")
    assert rows[1].endswith("| no: verdict_agreement, flag_agreement |") and "98.3% / 99.0%" in rows[1]


def test_no_passing_candidate_leaves_a_float32_bundle_whose_card_says_why(tmp_path):
    (tmp_path / INT8_FILE).write_bytes(b"an older model's int8 engine")
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "2.1.0", "runtime_int8": {"file": INT8_FILE}}))
    (tmp_path / "MODEL_CARD.md").write_text(f"# Card\n\n{CARD_MARKER}\n\nThe old engine passed.\n")
    results = {"float32 (shipped)": engine_result(None), "int8": engine_result(False)}
    write_float32_only(tmp_path, results, "| the table |\n")
    assert not (tmp_path / INT8_FILE).exists()
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert "runtime_int8" not in metadata
    assert metadata["int8_check"]["passed"] is False and not metadata["int8_check"]["equivalence"]["int8"]["passed"]
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.count(CARD_MARKER) == 1 and "The old engine passed" not in card
    assert "No int8 candidate passed" in card and card.endswith("| the table |\n")
