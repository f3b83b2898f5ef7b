"""Keyword-spotting metrics (FRR, FAR, DET curve, threshold at 1% FAR) on cases computed by hand, and `predict --threshold`."""

import json

import numpy as np
import pytest

from pipeline.kws_metrics import (
    DET_FILE,
    REJECTED,
    DetCurve,
    accepted_keywords,
    decided_labels,
    det_curve,
    keyword_spotting_metrics,
    markdown_section,
    operating_point,
    operating_point_summary,
    plot_det,
    rates_at,
    shown_threshold,
)
from pipeline.report import compute_metrics, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 2 keywords + the two reject labels; 6 keyword clips, 4 non-keyword clips (1 _silence_, 3 _unknown_)
CLASSES = ["yes", "no", "_silence_", "_unknown_"]
YES, NO, SILENCE, UNKNOWN = range(4)
LABELS = np.array([YES, YES, YES, NO, NO, NO, SILENCE, UNKNOWN, UNKNOWN, UNKNOWN])
PROBS = np.array(
    [
        [0.90, 0.05, 0.03, 0.02],  # 0 yes -> yes 0.90
        [0.60, 0.30, 0.05, 0.05],  # 1 yes -> yes 0.60
        [0.30, 0.50, 0.10, 0.10],  # 2 yes -> no  0.50: the wrong keyword, a false reject at every threshold
        [0.10, 0.80, 0.05, 0.05],  # 3 no  -> no  0.80
        [0.05, 0.45, 0.10, 0.40],  # 4 no  -> no  0.45
        [0.10, 0.20, 0.10, 0.60],  # 5 no  -> _unknown_: rejected at every threshold
        [0.05, 0.05, 0.85, 0.05],  # 6 _silence_ -> _silence_: rejected
        [0.70, 0.10, 0.10, 0.10],  # 7 _unknown_ -> yes 0.70: a false accept up to t = 0.70
        [0.10, 0.55, 0.05, 0.30],  # 8 _unknown_ -> no  0.55: a false accept up to t = 0.55
        [0.20, 0.10, 0.10, 0.60],  # 9 _unknown_ -> _unknown_: rejected
    ]
)
# By hand, per threshold: which keyword clips are accepted as their own keyword, which non-keyword clips are accepted.
#   t = 0 (argmax): yes 0, 1 | no 3, 4      -> FRR_yes 1/3 (clip 2), FRR_no 1/3 (clip 5), FRR 2/6; FAR 2/4 (clips 7, 8)
#   t = 0.6:        yes 0, 1 | no 3         -> FRR_yes 1/3, FRR_no 2/3, FRR 3/6;                    FAR 1/4 (clip 7)
#   t = 0.8:        yes 0    | no 3         -> FRR_yes 2/3, FRR_no 2/3, FRR 4/6;                    FAR 0
CURVE_THRESHOLDS = [0.0, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9]  # 0, then the top-1 scores of keyword-topped clips but the lowest (0.45)
CURVE_FRR = [2 / 6, 3 / 6, 3 / 6, 3 / 6, 4 / 6, 4 / 6, 5 / 6]
CURVE_FAR = [2 / 4, 2 / 4, 2 / 4, 1 / 4, 1 / 4, 0.0, 0.0]


def test_accepted_keywords_and_rates_by_hand():
    assert accepted_keywords(PROBS, CLASSES).tolist() == [YES, YES, NO, NO, NO, REJECTED, REJECTED, YES, NO, REJECTED]
    assert accepted_keywords(PROBS, CLASSES, 0.6).tolist() == [YES, YES, REJECTED, NO, REJECTED, REJECTED, REJECTED, YES, REJECTED, REJECTED]
    at0 = rates_at(LABELS, PROBS, CLASSES)
    assert at0["frr"] == pytest.approx(2 / 6) and at0["far"] == pytest.approx(2 / 4)
    assert at0["frr_per_keyword"] == pytest.approx({"yes": 1 / 3, "no": 1 / 3})
    assert at0["far_per_keyword"] == pytest.approx({"yes": 1 / 4, "no": 1 / 4})
    at6 = rates_at(LABELS, PROBS, CLASSES, 0.6)  # clip 1 scores exactly 0.6: accepted (>=)
    assert at6["frr"] == pytest.approx(3 / 6) and at6["far"] == pytest.approx(1 / 4)
    assert at6["frr_per_keyword"] == pytest.approx({"yes": 1 / 3, "no": 2 / 3})
    assert at6["far_per_keyword"] == pytest.approx({"yes": 1 / 4, "no": 0.0})
    at8 = rates_at(LABELS, PROBS, CLASSES, 0.8)
    assert (at8["frr"], at8["far"]) == pytest.approx((4 / 6, 0.0))


def test_det_curve_is_exact_and_monotone_by_hand():
    curve = det_curve(LABELS, PROBS, CLASSES)
    np.testing.assert_allclose(curve.thresholds, CURVE_THRESHOLDS)
    np.testing.assert_allclose(curve.frr, CURVE_FRR)
    np.testing.assert_allclose(curve.far, CURVE_FAR)


def test_det_curve_on_many_clips_matches_rates_at_between_its_points():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "_silence_", "_unknown_"]
    logits = rng.normal(size=(300, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 5, size=300)
    curve = det_curve(labels, probs, classes)
    assert np.all(np.diff(curve.thresholds) > 0) and curve.thresholds[0] == 0.0
    assert np.all(np.diff(curve.frr) >= 0) and np.all(np.diff(curve.far) <= 0)
    assert curve.far[0] > 0.1 and curve.frr[-1] > curve.frr[0]  # the thresholds really change the answer
    # every point is rates_at at its threshold, and any threshold up to the next point decides the same
    for i in range(0, len(curve.thresholds), 17):
        t = curve.thresholds[i]
        for probe in ([t] if i == 0 else [t, (curve.thresholds[i - 1] + t) / 2]):
            r = rates_at(labels, probs, classes, probe)
            assert (r["frr"], r["far"]) == (curve.frr[i], curve.far[i])


def test_threshold_at_far_target():
    curve = det_curve(LABELS, PROBS, CLASSES)
    assert operating_point(curve) == pytest.approx((0.8, 4 / 6))  # FAR <= 1% of 4 clips means 0 false accepts: from t = 0.8
    assert operating_point(curve, far_target=0.25) == pytest.approx((0.6, 3 / 6))
    assert operating_point(curve, far_target=0.5) == (0.0, pytest.approx(2 / 6))  # the argmax decision already meets it
    m = keyword_spotting_metrics(LABELS, PROBS, CLASSES)
    assert (m["far_target"], m["threshold_at_far"], m["frr_at_far"], m["far_at_far"]) == pytest.approx((0.01, 0.8, 4 / 6, 0.0))
    assert (m["frr"], m["far"]) == pytest.approx((2 / 6, 2 / 4))
    assert m["frr_per_keyword_at_far"] == pytest.approx({"yes": 2 / 3, "no": 2 / 3})
    assert m["kws_clips"] == {"keyword": 6, "_silence_": 1, "_unknown_": 3}
    assert m["kws_notes"] == []
    json.dumps(m)  # goes into metrics.json as it is
    assert operating_point_summary(m) == "FRR 0.667 at FAR <= 1% (t = 0.8000)"


def test_far_target_out_of_reach():
    probs = PROBS.copy()
    probs[7] = [0.95, 0.02, 0.02, 0.01]  # an _unknown_ clip is the most confident "yes" of all: FAR >= 1/4 while anything is accepted
    curve = det_curve(LABELS, probs, CLASSES)
    assert curve.far[-1] == pytest.approx(1 / 4)
    assert operating_point(curve) == (None, None)
    m = keyword_spotting_metrics(LABELS, probs, CLASSES)
    assert m["threshold_at_far"] is None and m["frr_at_far"] is None and m["frr_per_keyword_at_far"] is None
    assert m["kws_notes"] == ["No threshold that accepts any clip reaches FAR <= 1%."]
    assert operating_point_summary(m) == "FRR — at FAR <= 1%"


def test_undefined_rates_without_non_keyword_or_keyword_clips():
    keyword_only = LABELS < SILENCE
    m = keyword_spotting_metrics(LABELS[keyword_only], PROBS[keyword_only], CLASSES)
    assert m["far"] is None and m["far_per_keyword"] == {"yes": None, "no": None}
    assert m["frr"] == pytest.approx(2 / 6)
    assert m["threshold_at_far"] is None and m["det_curve"]["far"] is None
    assert m["kws_notes"] == ["FAR is undefined: no _silence_ / _unknown_ clips were scored."]

    m = keyword_spotting_metrics(LABELS[~keyword_only], PROBS[~keyword_only], CLASSES)
    assert m["frr"] is None and m["frr_per_keyword"] == {"yes": None, "no": None}
    assert m["far"] == pytest.approx(2 / 4)
    # the most confident clip (yes 0.70) is a false accept: only a threshold that accepts nothing has FAR 0
    np.testing.assert_allclose(m["det_curve"]["far"], [2 / 4, 1 / 4])
    assert m["threshold_at_far"] is None and m["frr_at_far"] is None
    assert m["kws_notes"] == ["FRR is undefined: no keyword clips were scored.", "No threshold that accepts any clip reaches FAR <= 1%."]
    assert keyword_spotting_metrics(LABELS[~keyword_only], PROBS[~keyword_only], CLASSES, far_target=0.25)["threshold_at_far"] == 0.7

    m = keyword_spotting_metrics(np.zeros(0, int), np.zeros((0, 4)), CLASSES)
    assert (m["frr"], m["far"], m["threshold_at_far"]) == (None, None, None) and len(m["kws_notes"]) == 2
    assert rates_at([YES], [[0.9, 0.1, 0, 0]], CLASSES)["frr_per_keyword"] == {"yes": 0.0, "no": None}  # no clips of "no"


def test_det_png_and_report_section(tmp_path):
    m = compute_metrics(LABELS, PROBS, CLASSES)
    m.update(keyword_spotting_metrics(LABELS, PROBS, CLASSES))
    png = plot_det(DetCurve.from_dict(m["det_curve"]), tmp_path / DET_FILE, m["far_target"])
    data = png.read_bytes()
    assert png.name == "det.png" and data[:8] == PNG_MAGIC and len(data) > 5000
    write_report(tmp_path, m, CLASSES, sections=[markdown_section(m)])
    md = (tmp_path / "report.md").read_text()
    assert "## Keyword spotting" in md and md.index("## Keyword spotting") < md.index("## Plots")
    assert "Scored: 6 keyword clips, 1 `_silence_`, 3 `_unknown_`." in md
    assert "| keyword | clips | FRR (argmax) | FAR (argmax) | FRR (t = 0.8000) | FAR (t = 0.8000) |" in md
    assert "| yes | 3 | 0.333 | 0.250 | 0.667 | 0.000 |" in md
    assert "| **all keywords** | 6 | 0.333 | 0.500 | 0.667 | 0.000 |" in md
    assert "FAR <= 1% from threshold t = 0.8000" in md and "`actrec predict --threshold 0.8000`" in md
    assert "![DET curve: FRR against FAR over every threshold](det.png)" in md
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["frr_at_far"] == pytest.approx(4 / 6) and doc["frr_per_keyword"]["no"] == pytest.approx(1 / 3)
    # an undefined curve still draws, with its reason
    assert plot_det(DetCurve(np.zeros(1), np.ones(1), None), tmp_path / "undefined.png").read_bytes()[:8] == PNG_MAGIC


def test_shown_threshold_rounds_up():
    assert [shown_threshold(t) for t in (0.8, 0.62, 0.123401, 0.99991)] == ["0.8000", "0.6200", "0.1235", "1.0000"]


# ----------------------------------------------------------------------------- predict --threshold


def test_decided_labels():
    assert decided_labels(PROBS, CLASSES, 0.6) == ["yes", "yes", "_unknown_", "no", "_unknown_", "_unknown_", "_silence_", "yes",
                                                   "_unknown_", "_unknown_"]
    # a run trained without _unknown_: a top class below the threshold is still reported as _unknown_
    assert decided_labels([[0.55, 0.45], [0.2, 0.8]], ["Fast", "Slow"], 0.6) == ["_unknown_", "Slow"]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan"])
def test_cli_refuses_a_threshold_outside_0_1(value, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["predict", "--run-dir", str(tmp_path), "--threshold", value, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"actrec: error: --threshold must be a probability between 0 and 1, both excluded (got {float(value)})"]
