"""Evaluation metrics and report files: values checked on cases small enough to compute by hand."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.report import (
    REPORT_FILES,
    compute_metrics,
    multi_view_scores,
    plot_timeline,
    summary_line,
    worst_misclassified,
    write_report,
    write_timeline_csv,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 3 classes, unbalanced: predictions 0, 0, 1 | 1, 2 | 2
NAMES3 = ["run", "jump", "wave"]
LABELS3 = np.array([0, 0, 0, 1, 1, 2])
PROBS3 = np.array(
    [
        [0.7, 0.2, 0.1],  # run  -> run   ok
        [0.6, 0.3, 0.1],  # run  -> run   ok
        [0.2, 0.7, 0.1],  # run  -> jump  wrong (0.7)
        [0.1, 0.8, 0.1],  # jump -> jump  ok
        [0.1, 0.3, 0.6],  # jump -> wave  wrong (0.6)
        [0.1, 0.1, 0.8],  # wave -> wave  ok
    ],
    dtype=np.float32,
)


def test_three_class_metrics_by_hand():
    m = compute_metrics(LABELS3, PROBS3, NAMES3)
    assert m["num_clips"] == 6
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] is None  # K = 3
    # run: tp 2, predicted 2, support 3; jump: tp 1, predicted 2, support 2; wave: tp 1, predicted 2, support 1
    expected = {
        "run": (1.0, 2 / 3, 0.8, 3, 2),
        "jump": (0.5, 0.5, 0.5, 2, 2),
        "wave": (0.5, 1.0, 2 / 3, 1, 2),
    }
    for name, (precision, recall, f1, support, predicted) in expected.items():
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert (row["support"], row["predicted"]) == (support, predicted)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)  # 13/18, not top-1 (classes unbalanced)
    # bins at 0.6 (1 of 2 right), 0.7 (1 of 2), 0.8 (2 of 2) -> (2 * 0.1 + 2 * 0.2 + 2 * 0.2) / 6
    assert m["ece"] == pytest.approx(1 / 6, abs=1e-6)
    json.dumps(m)  # JSON-serialisable as is


def test_macro_f1_counts_predicted_only_classes_and_skips_absent_ones():
    # class 0 true twice (one predicted as 1); class 1 predicted once but never true; class 2 nowhere
    labels = [0, 0]
    probs = [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]
    m = compute_metrics(labels, probs, ["a", "b", "c"])
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3)  # P 1, R 0.5
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)  # c left out, b counts as 0
    assert m["mean_class_accuracy"] == pytest.approx(0.5)  # only a has clips


def test_top5_only_above_five_classes():
    labels = [6, 0, 3]
    probs = np.array(
        [
            [0.30, 0.25, 0.15, 0.12, 0.05, 0.03, 0.10],  # true 6 ranks 5th -> in top-5
            [0.04, 0.30, 0.20, 0.15, 0.12, 0.10, 0.09],  # true 0 ranks 7th -> not in top-5
            [0.10, 0.10, 0.10, 0.40, 0.10, 0.10, 0.10],  # true 3 ranks 1st
        ]
    )
    m = compute_metrics(labels, probs, [f"c{i}" for i in range(7)])
    assert m["top1"] == pytest.approx(1 / 3)
    assert m["top5"] == pytest.approx(2 / 3)
    assert compute_metrics([0], [[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]], list("abcdef"))["top5"] == 1.0  # K = 6
    assert compute_metrics([0], [[0.6, 0.1, 0.1, 0.1, 0.1]], list("abcde"))["top5"] is None  # K = 5


def test_ece_overconfident_case():
    # every clip predicted with confidence 0.8, half of them right -> ECE = |0.5 - 0.8| = 0.3
    labels = np.array([0] * 5 + [1] * 5)
    probs = np.tile(np.array([[0.8, 0.2]], dtype=np.float32), (10, 1))
    m = compute_metrics(labels, probs, ["a", "b"], n_bins=15)
    assert m["ece"] == pytest.approx(0.3, abs=1e-6)
    filled = [b for b in m["reliability"] if b["count"]]
    assert len(m["reliability"]) == 15 and len(filled) == 1
    assert filled[0]["count"] == 10
    assert filled[0]["accuracy"] == pytest.approx(0.5)
    assert filled[0]["confidence"] == pytest.approx(0.8)
    assert filled[0]["lower"] <= 0.8 < filled[0]["upper"]
    empty = [b for b in m["reliability"] if not b["count"]]
    assert all(b["accuracy"] is None and b["confidence"] is None for b in empty)


def test_ece_weights_bins_by_count():
    # 5 clips at 0.6 all right (gap 0.4) + 5 clips at 0.9 all right (gap 0.1) -> (0.4*5 + 0.1*5) / 10
    labels = [0] * 10
    probs = [[0.6, 0.4]] * 5 + [[0.9, 0.1]] * 5
    assert compute_metrics(labels, probs, ["a", "b"], n_bins=10)["ece"] == pytest.approx(0.25)


def test_ece_zero_when_calibrated():
    # confidence 0.75 with 3 of 4 right, and confidence 1.0 always right (1.0 falls in the last bin)
    labels = [0, 0, 0, 1, 0, 1]
    probs = [[0.75, 0.25]] * 4 + [[1.0, 0.0], [0.0, 1.0]]
    m = compute_metrics(labels, probs, ["a", "b"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["reliability"][-1]["count"] == 2


def test_empty_input_gives_none_rates():
    m = compute_metrics(np.zeros(0, dtype=int), np.zeros((0, 3)), ["a", "b", "c"])
    assert m["num_clips"] == 0 and m["top1"] is None and m["ece"] is None and m["macro_f1"] is None
    assert m["confusion"] == [[0] * 3] * 3


def test_report_module_needs_no_tensorflow():
    code = (
        "import sys; import pipeline.report as r; r.compute_metrics([0], [[0.9, 0.1]], ['a', 'b']); "
        "assert not {'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels must lie"):
        compute_metrics([0, 3], [[0.5, 0.5, 0.0]] * 2, ["a", "b", "c"])
    with pytest.raises(ValueError, match="class names"):
        compute_metrics([0], [[0.5, 0.5]], ["a", "b", "c"])
    with pytest.raises(ValueError, match="N, V, K"):
        multi_view_scores(np.zeros((2, 3)))


def test_multi_view_is_the_mean_over_views():
    views = np.array(
        [
            [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]],
            [[0.2, 0.8], [0.2, 0.8], [0.5, 0.5]],
        ],
        dtype=np.float32,
    )
    scores = multi_view_scores(views)
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores, [[0.6, 0.4], [0.3, 0.7]], atol=1e-6)
    # a clip one view gets wrong is right after averaging
    assert compute_metrics([0, 1], scores, ["a", "b"])["top1"] == 1.0


def test_worst_misclassified_order_and_contents():
    ids = [f"clips/{i}.mp4" for i in range(len(LABELS3))]
    worst = worst_misclassified(LABELS3, PROBS3, ids, NAMES3, k=10)
    assert [w["path"] for w in worst] == ["clips/2.mp4", "clips/4.mp4"]  # confidence 0.7, then 0.6
    first = worst[0]
    assert (first["true"], first["predicted"]) == ("run", "jump")
    assert first["confidence"] == pytest.approx(0.7)
    assert first["true_prob"] == pytest.approx(0.2)
    assert [label for label, _ in first["top3"]] == ["jump", "run", "wave"]
    np.testing.assert_allclose([p for _, p in first["top3"]], [0.7, 0.2, 0.1], atol=1e-6)
    assert len(worst_misclassified(LABELS3, PROBS3, ids, NAMES3, k=1)) == 1
    assert worst_misclassified([0], [[0.9, 0.1]], ["x"], ["a", "b"]) == []
    json.dumps(worst)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    # 4 classes, one ("sit, still": a comma for the CSV) with no clips and never predicted
    names = NAMES3 + ["sit, still"]
    probs = np.concatenate([PROBS3 * 0.9, np.full((6, 1), 0.1, dtype=np.float32)], axis=1)
    metrics = compute_metrics(LABELS3, probs, names)
    ids = [f"data/{names[label]}/clip_{i}.mp4" for i, label in enumerate(LABELS3)]
    worst = worst_misclassified(LABELS3, probs, ids, names, k=5)
    out = tmp_path_factory.mktemp("report")
    skipped = [("bad/a.mp4", "cannot decode"), ("bad/b.avi", "no frames"), ("bad/c.mp4", "cannot decode")]
    extra = {"single-view": metrics, "multi-view (3 clips)": metrics, "checkpoint": "model.keras"}
    paths = write_report(out, metrics, names, worst=worst, skipped=skipped, extra=extra, title="test report")
    return out, paths, metrics, worst, names


def test_write_report_writes_every_file_and_nothing_else(report_dir):
    out, paths, *_ = report_dir
    assert set(paths) == set(REPORT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # no temporary files left behind
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name


def test_report_pngs_are_real_pngs(report_dir):
    out, *_ = report_dir
    for name in ("confusion_matrix.png", "per_class.png", "reliability.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 5000, name


def test_confusion_csv_rows_are_normalised(report_dir):
    out, _, metrics, _, names = report_dir
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == names
    assert [r[0] for r in rows[1:]] == names
    sums = [sum(float(v) for v in r[1:]) for r in rows[1:]]
    assert sums == pytest.approx([1.0, 1.0, 1.0, 0.0], abs=1e-5)  # the class with no clips stays 0
    assert float(rows[1][1]) == pytest.approx(2 / 3, abs=1e-6)  # run: 2 of 3 right


def test_metrics_json_has_skipped_and_extra(report_dir):
    out, _, metrics, worst, _ = report_dir
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["top1"] == pytest.approx(metrics["top1"])
    assert doc["skipped"] == {"count": 3, "by_reason": {"cannot decode": ["bad/a.mp4", "bad/c.mp4"], "no frames": ["bad/b.avi"]}}
    assert doc["extra"]["checkpoint"] == "model.keras"
    assert doc["extra"]["multi-view (3 clips)"]["top1"] == pytest.approx(metrics["top1"])
    assert doc["worst_misclassified"] == worst


def test_report_markdown(report_dir):
    out, _, metrics, worst, _ = report_dir
    md = (out / "report.md").read_text()
    assert md.startswith("# test report")
    assert worst[0]["path"] in md
    for png in ("confusion_matrix.png", "per_class.png", "reliability.png"):
        assert f"({png})" in md
    assert "| single-view | multi-view (3 clips) |" in md
    assert "cannot decode" in md and "bad/b.avi" in md
    assert f"| top-1 accuracy | {metrics['top1']:.3f} |" in md
    assert "sit, still" in md


def test_summary_line():
    line = summary_line(compute_metrics(LABELS3, PROBS3, NAMES3))
    assert line == "top-1 0.667 | mean class acc 0.722 | macro-F1 0.656 | ECE 0.167 | 6 clips"


def test_timeline_png_and_csv(tmp_path):
    starts = np.arange(0.0, 16.0, 2.0)  # 8 windows of 4 s, stride 2 s
    ends = starts + 4.0
    names = [f"action {i}" for i in range(7)]
    probs = np.full((8, 7), 0.05)
    probs[np.arange(8), np.arange(8) % 7] = 0.7
    png = plot_timeline((starts + ends) / 2, probs, names, tmp_path / "timeline.png", top=5)
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    path = write_timeline_csv(tmp_path / "timeline.csv", starts, ends, probs, names)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["start_s", "end_s", "top_label", "top_prob"] + names
    assert len(rows) == 1 + 8
    assert rows[1][:4] == ["0.000", "4.000", "action 0", "0.700000"]
    assert rows[8][2] == "action 0"  # window 7 -> class 7 % 7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
