"""Open-set keyword spotting, the Speech Commands v2-12 way: data.keywords + _silence_ + _unknown_.

A small Speech Commands tree of tones (no espeak-ng needed): keyword folders, other-word folders and
_background_noise_/, with validation and testing lists.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import load_config
from pipeline.datasets import SPEECH_COMMANDS_FRACTIONS, read_manifest, resolve_rows, write_manifest
from pipeline.errors import UserError
from pipeline.labels import SILENCE, UNKNOWN

KEYWORDS = ["yes", "no"]
OTHERS = ["bed", "cat", "dog"]
SPEAKERS = [f"{i:08x}" for i in range(10)]  # 8 train, 1 val, 1 test
BACKGROUND_SECONDS = 20.0


def wav(path, seconds: float, freq: float, seed: int = 0, word: bool = True):
    """A 'word' (a 0.4-s tone burst of freq Hz amid faint noise) or, word=False, a steady tone in noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * 16000)) / 16000
    tone = np.sin(2 * np.pi * freq * t)
    if word:  # per-utterance normalisation removes what is steady: the word must stand out of its silence
        start = rng.uniform(0.1, 0.5)
        tone *= (t >= start) & (t < start + 0.4)
    x = 0.3 * tone + 0.01 * rng.standard_normal(len(t))
    sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")


@pytest.fixture(scope="module")
def kws_tree(tmp_path_factory):
    return write_tone_tree(tmp_path_factory.mktemp("kws"))


def write_tone_tree(root):
    """The tone tree at root: word w is a 0.4-s tone of 300 + 150 w Hz, 10 speakers each; two background recordings:
    the words' faint noise alone (what a stream holds between words) and a 60 Hz hum in it."""
    for w, word in enumerate(KEYWORDS + OTHERS):
        for s, speaker in enumerate(SPEAKERS):
            wav(root / word / f"{speaker}_nohash_0.wav", 1.0, 300 + 150 * w, seed=s)
    for name, hz in (("white", 0.0), ("hum", 60.0)):
        wav(root / "_background_noise_" / f"{name}.wav", BACKGROUND_SECONDS, hz, word=False)
    (root / "validation_list.txt").write_text("".join(f"{w}/{SPEAKERS[8]}_nohash_0.wav\n" for w in KEYWORDS + OTHERS))
    (root / "testing_list.txt").write_text("".join(f"{w}/{SPEAKERS[9]}_nohash_0.wav\n" for w in KEYWORDS + OTHERS))
    return root


def config(root, *extra):
    return load_config(None, ["data.kind=speech", "preprocess.modalities=[audio]", "preprocess.audio_seconds=1.0",
                              f"data.root={root}", f"data.keywords={KEYWORDS}", *extra])


def test_labels_are_keywords_then_silence_then_unknown(kws_tree):
    rows, classes, problems = resolve_rows(config(kws_tree))
    assert classes == ["yes", "no", SILENCE, UNKNOWN]
    assert problems == []
    train = Counter(r.label for r in rows if r.split == "train")
    # training keeps every clip: 8 speakers x 2 keywords, 8 x 3 other words, all training windows of the noise
    windows_per_file = int(BACKGROUND_SECONDS * (1 - sum(SPEECH_COMMANDS_FRACTIONS)))
    assert train == {"yes": 8, "no": 8, UNKNOWN: 24, SILENCE: 2 * windows_per_file}
    assert {r.path.split("/")[0] for r in rows if r.label == UNKNOWN} == set(OTHERS)


def test_silence_windows_are_cut_apart_in_time_by_split(kws_tree):
    rows, _, _ = resolve_rows(config(kws_tree), own_dataset=False)  # every window: none drawn away
    silence = [r for r in rows if r.label == SILENCE]
    assert all(r.start is not None and r.path.startswith("_background_noise_/") for r in silence)
    for name in ("white", "hum"):
        spans = {split: [(r.start, r.start + 1.0) for r in silence if r.split == split and name in r.path] for split in ("train", "val", "test")}
        assert spans["train"] and spans["val"] and spans["test"]
        assert max(e for _, e in spans["train"]) <= min(s for s, _ in spans["val"]) + 1e-9
        assert max(e for _, e in spans["val"]) <= min(s for s, _ in spans["test"]) + 1e-9
        assert max(e for _, e in spans["test"]) <= BACKGROUND_SECONDS + 1e-9
    assert len({r.clip_id for r in rows}) == len(rows)


def test_validation_and_test_hold_the_configured_shares(kws_tree):
    rows, _, _ = resolve_rows(config(kws_tree, "data.silence_fraction=0.25", "data.unknown_fraction=0.25"))
    for split in ("val", "test"):
        counts = Counter(r.label for r in rows if r.split == split)
        keywords = counts["yes"] + counts["no"]
        # share / keyword share x keyword clips = 0.25 / 0.5 x 2 = 1 of each reject label (of 3 unknown, 4 silence windows)
        assert (keywords, counts[UNKNOWN], counts[SILENCE]) == (2, 1, 1), (split, counts)
    again, _, _ = resolve_rows(config(kws_tree, "data.silence_fraction=0.25", "data.unknown_fraction=0.25"))
    assert again == rows  # seeded


def test_another_folder_keeps_every_clip_and_needs_no_background(kws_tree, tmp_path):
    rows, classes, _ = resolve_rows(config(kws_tree, "data.silence_fraction=0.25"), own_dataset=False)
    assert Counter(r.label for r in rows if r.split == "test") == {"yes": 1, "no": 1, UNKNOWN: 3, SILENCE: 2 * 2}
    words_only = tmp_path / "words"
    wav(words_only / "yes" / "a_nohash_0.wav", 1.0, 300)
    rows, classes, _ = resolve_rows(config(words_only, "data.layout=folders", "data.test_fraction=0", "data.val_fraction=0"), own_dataset=False)
    assert classes == ["yes", "no", SILENCE, UNKNOWN] and [r.label for r in rows] == ["yes"]


def test_a_zero_share_drops_its_label(kws_tree):
    rows, classes, _ = resolve_rows(config(kws_tree, "data.unknown_fraction=0"))
    assert classes == ["yes", "no", SILENCE]
    assert UNKNOWN not in {r.label for r in rows} and not any(r.path.startswith("bed/") for r in rows)


def test_missing_sources_are_one_line_errors(kws_tree, tmp_path):
    bare = tmp_path / "bare"
    for word in KEYWORDS:
        for s in SPEAKERS[:3]:
            wav(bare / word / f"{s}_nohash_0.wav", 1.0, 300)
    with pytest.raises(UserError, match=r"no _silence_ clips .*_background_noise_") as err:
        resolve_rows(config(bare, "data.layout=folders"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no _unknown_ clips"):
        resolve_rows(config(bare, "data.layout=folders", "data.silence_fraction=0"))
    with pytest.raises(UserError, match="keyword 'maybe' has no folder"):
        resolve_rows(load_config(None, ["data.kind=speech", "preprocess.modalities=[audio]", f"data.root={kws_tree}",
                                        "data.keywords=[yes,maybe]"]))


@pytest.mark.parametrize("overrides, message", [
    (["data.keywords=[yes]", "data.classes=[yes]"], "cannot both be set"),
    (["data.keywords=[yes]", "data.kind=video"], "needs data.kind: speech"),
    (["data.keywords=[yes,_unknown_]"], "distinct word folders"),
    (["data.keywords=[yes]", "data.unknown_fraction=0.6", "data.silence_fraction=0.5"], "add up to less than 1"),
])
def test_config_mistakes_are_one_line(overrides, message):
    base = [] if "data.kind=video" in overrides else ["data.kind=speech", "preprocess.modalities=[audio]"]
    with pytest.raises(UserError, match=message):
        load_config(None, base + overrides)


def test_manifest_keeps_the_windows(kws_tree, tmp_path):
    rows, _, _ = resolve_rows(config(kws_tree))
    write_manifest(rows, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv") == rows
    # a manifest of the words alone (no _silence_ rows) gets its windows from data.root
    write_manifest([r for r in rows if r.start is None], tmp_path / "words.csv")
    again, classes, _ = resolve_rows(config(kws_tree), manifest=tmp_path / "words.csv")
    assert sorted(r.clip_id for r in again) == sorted(r.clip_id for r in rows)
    (tmp_path / "bad.csv").write_text("path,label,split,group,start\nyes/a.wav,yes,train,a,-1\n")
    with pytest.raises(UserError, match="bad.csv:2: start '-1'"):
        read_manifest(tmp_path / "bad.csv")


def test_each_epoch_draws_the_shares_and_every_keyword_once():
    tf = pytest.importorskip("tensorflow")
    from pipeline.features.epochs import KINDS, ORDER, epoch_seed, shuffled
    from pipeline.stages.train import epoch_plan, with_epoch_shares

    classes = ["yes", "no", SILENCE, UNKNOWN]
    labels = [0] * 30 + [1] * 30 + [2] * 7 + [3] * 100
    index = {"classes": classes, "counts": {"train": len(labels)},
             "train_per_class": {"yes": 30, "no": 30, SILENCE: 7, UNKNOWN: 100}}
    cfg = load_config(None, ["data.kind=speech", "preprocess.modalities=[audio]", "data.keywords=[yes,no]",
                             "data.unknown_fraction=0.2", "data.silence_fraction=0.1"])
    plan = epoch_plan(index, cfg)
    assert plan == {"keywords": 60, UNKNOWN: round(0.2 / 0.7 * 60), SILENCE: round(0.1 / 0.7 * 60)}
    ids = [f"clip{i}".encode() for i in range(len(labels))]
    ds = tf.data.Dataset.from_tensor_slices(({"x": np.arange(len(labels), dtype=np.float32)}, tf.one_hot(labels, 4), ids))

    def epoch(e):  # as make_dataset orders an epoch: the epoch's seeds shuffle the clips and order the kinds
        return with_epoch_shares(shuffled(ds, len(labels), epoch_seed(1, e, ORDER)), index, cfg, epoch_seed(1, e, KINDS))

    epochs = [[(int(np.argmax(y)), cid.decode()) for _, y, cid in epoch(e).as_numpy_iterator()] for e in range(2)]
    assert epochs[1] == [(int(np.argmax(y)), cid.decode()) for _, y, cid in epoch(1).as_numpy_iterator()]  # a function of the epoch
    for epoch in epochs:
        counts = Counter(label for label, _ in epoch)
        assert counts == {0: 30, 1: 30, 3: plan[UNKNOWN], 2: plan[SILENCE]}
        assert len({cid for label, cid in epoch if label < 2}) == 60  # every keyword clip exactly once
    unknown = [{cid for label, cid in epoch if label == 3} for epoch in epochs]
    assert unknown[0] != unknown[1]  # a new draw of the other words each epoch
    closed = {"classes": ["yes", "no"], "counts": {"train": 60}, "train_per_class": {"yes": 30, "no": 30}}
    assert epoch_plan(closed, load_config(None, [])) == {"all": 60}


TINY_KWS = ["preprocess.workers=0", "preprocess.keep_waveform=true", "preprocess.n_mfcc=13", "model.name=audio_rnn",
            "model.units=16", "model.bidirectional=false", "model.pooling=mean", "train.batch_size=8", "train.epochs=30",
            "train.early_stopping=0", "train.learning_rate=0.03", "data.unknown_fraction=0.25", "data.silence_fraction=0.25"]


@pytest.fixture(scope="module")
def kws_run(kws_tree, tmp_path_factory):
    """A 4-label keyword spotter (yes, no, _silence_, _unknown_) trained on the tone tree, waveform augmentation on.
    Trained until it has learnt the tones (test top-1 1.0 on seeds 0-2); 12 epochs of 8 units left the loss at chance."""
    from pipeline.stages.preprocess import preprocess
    from pipeline.stages.train import train

    run = tmp_path_factory.mktemp("kws_run")
    args = [f"data.root={kws_tree}", "data.kind=speech", "preprocess.modalities=[audio]", "preprocess.audio_seconds=1.0",
            f"data.keywords={KEYWORDS}", *TINY_KWS]
    index = preprocess(None, run, args, progress=False)
    train(None, run, args, progress=False)
    return run, index


@pytest.mark.slow  # uses the trained kws_run
def test_open_set_run_caches_twelve_label_style_classes_and_shares(kws_run):
    _, index = kws_run
    assert index["classes"] == ["yes", "no", SILENCE, UNKNOWN]
    assert index["train_per_class"] == {"yes": 8, "no": 8, UNKNOWN: 24, SILENCE: 2 * 16}
    assert "waveform" in index["features"]


@pytest.mark.slow  # uses the trained kws_run
def test_augmentation_changes_training_examples_only(kws_run):
    import tensorflow as tf

    from pipeline.config import load_config as load
    from pipeline.stages.train import make_dataset

    run, index = kws_run
    cfg = load(run / "config.yaml")
    cached = {}
    for shard in index["shards"]["val"] + index["shards"]["train"]:
        spec = {"clip_id": tf.io.FixedLenFeature([], tf.string), "mfcc": tf.io.FixedLenFeature(index["features"]["mfcc"]["shape"], tf.float32)}
        for record in tf.data.TFRecordDataset(str(run / "features" / shard)):
            ex = tf.io.parse_single_example(record, spec)
            cached[ex["clip_id"].numpy().decode()] = ex["mfcc"].numpy()
    names = ["mfcc", "mfcc_length"]
    for x, _, ids in make_dataset(run, index, "val", cfg, names, with_ids=True).unbatch().as_numpy_iterator():
        assert np.array_equal(x["mfcc"], cached[ids.decode()])  # validation: exactly the cached MFCCs
    train = list(make_dataset(run, index, "train", cfg, names, training=True, with_ids=True).unbatch().as_numpy_iterator())
    assert all(x["mfcc"].shape == tuple(index["features"]["mfcc"]["shape"]) for x, _, _ in train)
    changed = [not np.allclose(x["mfcc"], cached[ids.decode()], atol=1e-3) for x, _, ids in train]
    assert np.mean(changed) > 0.9  # shifted, stretched, noisy (and SpecAugment): almost never the cached MFCCs


@pytest.mark.slow  # uses the trained kws_run
def test_cut_words_relabel_words_unknown_and_leave_silence_alone(kws_run):
    import tensorflow as tf

    from pipeline.config import load_config as load
    from pipeline.config import replace
    from pipeline.stages.train import make_dataset

    run, index = kws_run
    classes = index["classes"]
    labels = {}
    for shard in index["shards"]["train"]:
        spec = {"clip_id": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
        for record in tf.data.TFRecordDataset(str(run / "features" / shard)):
            ex = tf.io.parse_single_example(record, spec)
            labels[ex["clip_id"].numpy().decode()] = classes[int(ex["label"])]
    names = ["mfcc", "mfcc_length"]

    def epoch(share):
        cfg = replace(load(run / "config.yaml"), train={"cut_words": share})
        return [(labels[ids.decode()], classes[int(np.argmax(y))])
                for _, y, ids in make_dataset(run, index, "train", cfg, names, training=True, with_ids=True).unbatch().as_numpy_iterator()]

    every = epoch(1.0)
    assert {said for cached, said in every if cached != SILENCE} == {UNKNOWN}  # every word cut short: none fires
    assert all(said == SILENCE for cached, said in every if cached == SILENCE)
    assert all(cached == said for cached, said in epoch(0.0))
    some = [cached != said for cached, said in epoch(0.5) if cached in KEYWORDS]
    assert 0.2 < np.mean(some) < 0.8


@pytest.mark.slow  # uses the trained kws_run
def test_evaluate_reports_false_rejects_and_false_accepts(kws_run, kws_tree):
    import json

    from pipeline.stages.evaluate import evaluate

    run, _ = kws_run
    metrics = evaluate(run, progress=False)
    assert metrics["top1"] > 0.5  # tones: learnable, chance is 0.25
    assert metrics["kws_clips"] == {"keyword": 2, SILENCE: 1, UNKNOWN: 1}  # the test split's shares (0.25 / 0.5 x 2)
    for key in ("frr", "far", "frr_per_keyword", "threshold_at_far", "frr_at_far"):
        assert key in metrics, key
    assert (run / "eval" / "test" / "det.png").stat().st_size > 1000
    # Another folder, the v2-12 way: every other word is _unknown_, the noise recordings' test part is cut into _silence_
    other = evaluate(run, data=kws_tree, name="protocol", progress=False)
    assert other["kws_clips"] == {"keyword": 2, SILENCE: 4, UNKNOWN: 3}
    assert "_silence_" in (run / "eval" / "protocol" / "report.md").read_text()
    assert json.loads((run / "eval" / "protocol" / "metrics.json").read_text())["far_target"] == 0.01


@pytest.mark.slow  # uses the trained kws_run
def test_predict_threshold_turns_unsure_keywords_into_unknown(kws_run, kws_tree):
    from pipeline.stages.predict import predict

    run, _ = kws_run
    clip = kws_tree / "yes" / f"{SPEAKERS[9]}_nohash_0.wav"
    (plain,) = predict(run, [clip], top=4)
    top = plain["top"][0]
    if top["label"] in (SILENCE, UNKNOWN):
        pytest.skip("the tiny model rejects this clip outright")
    if top["prob"] > 0.99999:  # predict rounds to 6 decimals: too close to 1 to put a threshold between
        pytest.skip("the tiny model is sure to the printed precision: no threshold below 1 is surely above it")
    (sure,) = predict(run, [clip], top=4, threshold=max(0.01, top["prob"] - 0.005))
    (unsure,) = predict(run, [clip], top=4, threshold=(top["prob"] + 1.0) / 2)  # above the top probability, below 1
    assert sure["label"] == top["label"]
    assert unsure["label"] == UNKNOWN and unsure["top"] == plain["top"]


@pytest.mark.slow  # uses the trained kws_run
def test_predict_threshold_in_text_json_and_windows(kws_run, kws_tree, tmp_path, capsys):
    import csv
    import json

    from pipeline.kws_metrics import decided_labels
    from pipeline.stages.predict import predict

    run, index = kws_run
    words = [kws_tree / w / f"{SPEAKERS[9]}_nohash_0.wav" for w in ("yes", "no", "bed")]
    long_wav = tmp_path / "three_words.wav"
    sf.write(long_wav, np.concatenate([sf.read(w, dtype="float32")[0] for w in words]), 16000, subtype="PCM_16")
    capsys.readouterr()
    results = predict(run, words, top=2, threshold=0.5, output="json")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for result, line in zip(results, lines):
        assert line["label"] == result["label"] == decided_labels(result["probs"][None], index["classes"], 0.5)[0]
        assert line["threshold"] == 0.5
    (result,) = predict(run, [long_wav], top=1, window=1.0, stride=1.0, threshold=0.5, output="text")
    assert result["windows"] == 3
    assert result["window_labels"] == decided_labels(result["window_probs"], index["classes"], 0.5)
    assert f"{long_wav}: 3 window(s) [" in capsys.readouterr().out
    with open(result["timeline_csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["start_s", "end_s", "top_label", "top_prob", "label"]
    assert [row[4] for row in rows[1:]] == result["window_labels"]
    assert "label" not in predict(run, words[:1])[0]  # without --threshold: no decision, as before
