"""The equivalence check's table and what --write leaves in the bundle when no candidate passes."""

import json

import numpy as np

from training.release.equivalence import CARD_MARKER, INT8_FILE, judge, markdown, write_float32_only


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


def decisions_of(labels, uncertain, not_xray):
    block = {"label": np.array(labels), "uncertain": np.array(uncertain)}
    return {"not_xray": np.array(not_xray), "balanced": block, "fracture_sensitive": block}


def test_the_criteria_are_judged_on_test_and_knees_and_the_other_checks_reported():
    """A candidate that agrees on test and the knees passes however it does on the wrists, and
    the wrists' agreement is still measured and shown."""
    same = decisions_of(["healthy"] * 100, [False] * 100, [False] * 100)
    wrists_differ = decisions_of(["fractured"] * 10 + ["healthy"] * 30, [True] * 40, [False] * 40)
    wrists_float = decisions_of(["healthy"] * 40, [False] * 40, [False] * 40)
    figures = {"binary_auroc_test": 0.89, "binary_auroc_test_fracatlas": 0.877, "ece_test": 0.04}
    reference = {**figures, "decisions": {"test": same, "knee": same, "wrist": wrists_float}}
    candidate = {**figures, "decisions": {"test": same, "knee": same, "wrist": wrists_differ}}
    judge(candidate, reference, ["balanced", "fracture_sensitive"])
    assert candidate["passed"]
    assert candidate["agreement"]["wrist"]["verdict_agreement"]["balanced"] == 0.75
    assert candidate["agreement"]["wrist"]["uncertain_agreement"]["balanced"] == 0.0
    # Every wrist asks for review under the candidate: none is a confident change.
    assert candidate["agreement"]["wrist"]["confident_change"]["balanced"] == 0.0
    candidate["decisions"]["knee"] = decisions_of(["fractured"] * 2 + ["healthy"] * 98, [False] * 100, [False] * 100)
    judge(candidate, reference, ["balanced", "fracture_sensitive"])
    assert not candidate["passes"]["verdict_agreement"] and candidate["passes"]["flag_agreement"]
    assert candidate["agreement"]["knee"]["confident_change"]["balanced"] == 0.02


def test_the_table_reports_the_other_checks_beside_the_criteria():
    results = {"float32 (shipped)": engine_result(None), "int8": engine_result(True)}
    for name, result in results.items():
        result["binary_auroc_val"], result["offsource"] = 0.88, {"offsource_auroc": 0.71}
    block = results["int8"]["agreement"]["test"]
    results["int8"]["agreement"].update(wrist=block, hbfmid=block)
    table = markdown(results, {"test": 782, "knee": 1000, "wrist": 42, "hbfmid": 87})
    assert "wrist_check (42 films) and hbfmid_check (87 films)" in table
    row = next(line for line in table.splitlines() if line.startswith("| int8 | 0.8800"))
    assert row == "| int8 | 0.8800 | 0.7100 | 98.3% / 99.0% | 97.0% | 98.3% / 99.0% | 97.0% | - | - |"


def test_quantization_aware_weights_also_answer_to_the_model_shipping_rule():
    """New weights that agree with float32 ship only when they beat it on validation and on the
    unseen-source check; the bundle's own weights, converted, need only agree."""
    same = decisions_of(["healthy"] * 100, [False] * 100, [False] * 100)
    figures = {"binary_auroc_test": 0.89, "binary_auroc_test_fracatlas": 0.877, "ece_test": 0.04}
    reference = {**figures, "binary_auroc_val": 0.8789, "offsource": {"offsource_auroc": 0.4977}}
    reference["decisions"] = {"test": same, "knee": same}

    def candidate(val_auroc, offsource_auroc):
        return {
            **figures,
            "binary_auroc_val": val_auroc,
            "offsource": {"offsource_auroc": offsource_auroc},
            "decisions": {"test": same, "knee": same},
        }

    converted = candidate(0.8787, 0.4977)
    judge(converted, reference, ["balanced", "fracture_sensitive"])
    assert converted["passed"] and "model_shipping_rule" not in converted["passes"]
    for val_auroc, offsource_auroc, ships in [(0.8787, 0.4997, False), (0.8790, 0.4977, False), (0.8790, 0.4980, True)]:
        retrained = candidate(val_auroc, offsource_auroc)
        judge(retrained, reference, ["balanced", "fracture_sensitive"], own_weights=True)
        assert retrained["passes"]["model_shipping_rule"] is ships and retrained["passed"] is ships
    without_check = {k: v for k, v in candidate(0.8790, 0.4980).items() if k != "offsource"}
    judge(without_check, reference, ["balanced", "fracture_sensitive"], own_weights=True)
    assert not without_check["passed"]
