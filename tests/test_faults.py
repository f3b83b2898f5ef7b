"""Fault injection: a corpus of bad inputs (tests/fault_corpus.py) x every command that reads media, interrupted runs,
a full disk, and two writers on one run dir.

For every bad file and every command: the exit code, exactly one line (or one errors-CSV row, or one skipped entry)
naming the file with its reason, no traceback, and the good files of the same batch still processed. Commands run
in-process through `pipeline.cli.main` (an escaping exception is a traceback: the test fails with it); a subprocess
only where a process boundary matters (SIGKILL, a file size limit, a second process holding the lock, file permissions
that root obeys only without its capabilities, what C libraries print on the terminal). What each test measured is
written up in docs/reliability.md; bugs in files outside this suite's reach are xfail(strict=True) with the fix.
Tests that need the trained runs, the preprocessed trees or a new process are `slow`; the fast lane keeps `actrec index`
over the corpus and the lock's clean-up. The speech run (and its float export) is built once per pytest process and
shared with test_predict and test_litert (fault_corpus.shared_speech_run).
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from tests import fault_corpus as fc
from tests.fault_corpus import AUDIO_CASES, FORMAT_TWINS, VIDEO_CASES

ROOT = Path(__file__).resolve().parents[1]

# Tiny runs (seconds to train): the FAST and TINY settings of tests/conftest.py ...
FAST = ["preprocess.encoder=small_cnn", "preprocess.image_size=32", "preprocess.num_frames=4", "preprocess.audio_seconds=1.0",
        "preprocess.workers=0", "preprocess.shard_size=3", "data.val_fraction=0.0"]
TINY = ["model.units=8", "train.batch_size=4", "train.early_stopping=0", "model.dropout=0.0", "train.learning_rate=0.01"]
# ... and a one-way GRU with no attention or augmentation: half the tracing time, and a model is all these tests need.
SMALL = ["model.bidirectional=false", "model.pooling=last", "train.augment=false"]
EXPORT_FAST = ["export.latency_runs=2", "export.representative_samples=4"]
EPOCHS = 8
# 1-clip shards and 8 epochs: the video run is also the uninterrupted run the SIGKILLed preprocess and train are compared with
VIDEO_ARGS = FAST + TINY + SMALL + EXPORT_FAST + ["model.name=av_fusion", f"train.epochs={EPOCHS}", "preprocess.shard_size=1"]
SPEECH_ARGS = fc.SPEECH_ARGS  # the same settings: TINY + SMALL + EXPORT_FAST, 8 epochs (the run is shared with other modules)

CASES = [("video", c) for c in VIDEO_CASES] + [("audio", c) for c in AUDIO_CASES]
CASE_IDS = [f"{kind}-{c.name}" for kind, c in CASES]


def sets(args):
    return [x for a in args for x in ("--set", a)]


# ----------------------------------------------------------------------------- running the CLI


@dataclass
class Result:
    rc: int | str
    out: str
    err: str
    traceback: str | None = None

    def lines(self) -> list[str]:
        return (self.out + self.err).splitlines()


def cli(*argv) -> Result:
    """`actrec ARGV` in this process: exit code, stdout, stderr, and the traceback of an exception that escaped main()."""
    out, err = io.StringIO(), io.StringIO()
    tb = None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            rc = e.code
        except BaseException:  # noqa: BLE001  what a user would see as a traceback
            rc, tb = "traceback", traceback.format_exc()
    return Result(rc, out.getvalue(), err.getvalue(), tb)


def ok(result: Result) -> Result:
    assert result.traceback is None, result.traceback
    assert "Traceback" not in result.err, result.err
    return result


def actrec_process(*argv) -> list[str]:
    """The command line of `actrec ARGV` in a new Python process (the installed entry point's code)."""
    return [sys.executable, "-m", "pipeline.cli", *map(str, argv)]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


# ----------------------------------------------------------------------------- the runs and the corpus (once per module)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def action_data(work):
    return fc.video_training_set(work / "actions")


@pytest.fixture(scope="module")
def speech_data(tmp_path_factory):
    return fc.shared_speech_run(tmp_path_factory)[0]


def quietly(fn, *args, **kw):
    with redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


@pytest.fixture(scope="module")
def video_run(work, action_data):
    """An audio-visual action run (av_fusion over small_cnn features + MFCCs; classes Fast, Slow), trained 8 epochs."""
    from pipeline.stages.preprocess import preprocess
    from pipeline.stages.train import train

    run, args = work / "runs/actions", VIDEO_ARGS + [f"data.root={action_data}"]
    quietly(preprocess, None, run, args, progress=False)
    quietly(train, None, run, args, progress=False)
    return run


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    """A speech run (audio_rnn over MFCCs; words no, yes), trained 8 epochs (fault_corpus.shared_speech_run: built once
    per pytest process, test_predict and test_litert read it too)."""
    return fc.shared_speech_run(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def speech_export(speech_run):
    """The speech run exported as float TFLite, uninterrupted (the reference of the SIGKILL test): RUN/export."""
    return fc.shared_float_export(speech_run)


@dataclass
class Tree:
    kind: str  # video | audio
    root: Path
    good: list[str]  # relative paths of the good files
    files: dict[str, Path]  # case name -> path
    extra: list[Path]  # good files outside the tree that predict gets in the same batch (format twins)


@pytest.fixture(scope="module")
def trees(work) -> dict[str, Tree]:
    video_good, video_files = fc.hostile_video_tree(work / "hostile_actions", work / "outside_actions")
    audio_good, audio_files = fc.hostile_audio_tree(work / "hostile_commands", work / "outside_commands")
    twins = [fc.reference_twin(c, work / "twins") for c in AUDIO_CASES if c.name in FORMAT_TWINS]
    return {"video": Tree("video", work / "hostile_actions", video_good, video_files, []),
            "audio": Tree("audio", work / "hostile_commands", audio_good, audio_files, twins)}


def run_of(kind, video_run, speech_run):
    return video_run if kind == "video" else speech_run


# ----------------------------------------------------------------------------- each command once over each tree


@pytest.fixture(scope="module")
def index_results(trees, work):
    """`actrec index TREE --out manifest.csv` per tree: (result, manifest paths)."""
    out = {}
    for kind, tree in trees.items():
        manifest = work / f"manifest_{kind}.csv"
        result = ok(cli("index", tree.root, "--out", manifest, "--kind", "video" if kind == "video" else "speech"))
        with open(manifest, newline="") as f:
            out[kind] = (result, [r["path"] for r in csv.DictReader(f)])
    return out


def cached_clip_ids(run: Path) -> list[str]:
    import tensorflow as tf

    index = json.loads((run / "features/index.json").read_text())
    ids = []
    for name in sum(index["shards"].values(), []):
        for record in tf.data.TFRecordDataset(str(run / "features" / name)):
            ids.append(tf.train.Example.FromString(record.numpy()).features.feature["clip_id"].bytes_list.value[0].decode())
    return ids


@pytest.fixture(scope="module")
def preprocess_results(trees, work):
    """`actrec preprocess` of each tree with its run's config: (result, errors CSV rows, clip ids cached)."""
    out = {}
    for kind, tree in trees.items():
        run = work / f"hostile_preprocess_{kind}"
        args = (VIDEO_ARGS if kind == "video" else SPEECH_ARGS) + [f"data.root={tree.root}"]
        result = ok(cli("preprocess", "--run-dir", run, "--no-progress", *sets(args)))
        with open(run / "preprocess_errors.csv", newline="") as f:
            out[kind] = (result, list(csv.DictReader(f)), cached_clip_ids(run))
    return out


@pytest.fixture(scope="module")
def evaluate_results(trees, video_run, speech_run):
    """`actrec evaluate --data TREE` per tree: (result, metrics.json)."""
    out = {}
    for kind, tree in trees.items():
        run = run_of(kind, video_run, speech_run)
        result = ok(cli("evaluate", "--run-dir", run, "--data", tree.root, "--name", "hostile", "--no-progress"))
        out[kind] = (result, json.loads((run / "eval/hostile/metrics.json").read_text()))
    return out


def batch_paths(tree: Tree) -> list[Path]:
    good = [tree.root / g for g in tree.good]
    return good[:2] + list(tree.files.values()) + good[2:] + tree.extra  # good files first, among and after the bad ones


def predict_batch(tree: Tree, run: Path, *extra) -> tuple[Result, dict[str, str]]:
    """`actrec predict` of every file of the tree in one batch: (result, {path: its one line})."""
    paths = batch_paths(tree)
    result = ok(cli("predict", "--run-dir", run, *extra, *paths))
    lines = result.out.splitlines()
    by_path = {}
    for p in paths:
        mine = [ln for ln in lines if ln.startswith(f"{p}: ")]
        assert len(mine) == 1, (p, mine)
        by_path[str(p)] = mine[0]
    assert len(lines) == len(paths) + 1  # and the summary
    return result, by_path


@pytest.fixture(scope="module")
def predict_results(trees, video_run, speech_run):
    return {kind: predict_batch(tree, run_of(kind, video_run, speech_run)) for kind, tree in trees.items()}


@pytest.fixture(scope="module")
def predict_tflite_results(trees, speech_run, speech_export):
    return {"audio": predict_batch(trees["audio"], speech_run, "--model", speech_export / "model_float.tflite")}


# ----------------------------------------------------------------------------- per case x command


@pytest.mark.parametrize("kind, case", CASES, ids=CASE_IDS)
def test_index(kind, case, index_results):
    result, manifest = index_results[kind]
    assert result.rc == 0
    rel = case.file
    skipped = [ln for ln in result.out.splitlines() if ln.strip().startswith(f"skipped {rel}:")]
    warned = [ln for ln in result.out.splitlines() if ln.strip().startswith(f"warning {rel}:")]
    expected = case.index or ("kept" if case.ok else "skipped")
    if expected == "skipped":
        assert len(skipped) == 1 and case.reason in skipped[0] and rel not in manifest, (skipped, result.out)
    else:
        assert not skipped and rel in manifest, result.out
        assert len(warned) == (expected == "warning"), result.out
    assert sum(rel in ln for ln in result.lines()) == len(skipped) + len(warned)


@pytest.mark.slow  # preprocesses both trees (~15 s)
@pytest.mark.parametrize("kind, case", CASES, ids=CASE_IDS)
def test_preprocess(kind, case, preprocess_results):
    result, errors, cached = preprocess_results[kind]
    assert result.rc == 0
    rows = [e for e in errors if e["path"] == case.file]
    if case.ok:
        assert not rows and case.file in cached
    else:
        assert len(rows) == 1 and case.reason in rows[0]["reason"] and case.file not in cached, rows
    printed = [line for line in (result.out + result.err).splitlines() if case.file in line]
    if case.index == "warning" and case.ok:  # a video without sound: cached with its audio absent, and said once
        assert printed == [f"preprocess: warning: {case.file}: no audio track: classified from video only"], printed
    else:
        assert not printed  # named in preprocess_errors.csv, not printed


@pytest.mark.slow  # trains the two runs (~1 min)
@pytest.mark.parametrize("kind, case", CASES, ids=CASE_IDS)
def test_evaluate_data(kind, case, evaluate_results):
    result, metrics = evaluate_results[kind]
    assert result.rc == 0
    listed = [(reason, path) for reason, paths in metrics["skipped"]["by_reason"].items() for path in paths if path == case.file]
    if case.ok:
        assert not listed
    else:
        assert len(listed) == 1 and case.reason in listed[0][0], listed


def check_predict_line(case, line):
    if case.predicted():
        assert ": error:" not in line, line
    else:
        assert ": error: " in line and case.reason in line.split(": error: ", 1)[1], line


@pytest.mark.slow  # needs the trained runs
@pytest.mark.parametrize("kind, case", CASES, ids=CASE_IDS)
def test_predict(kind, case, trees, predict_results):
    result, lines = predict_results[kind]
    assert result.rc == 1
    check_predict_line(case, lines[str(trees[kind].files[case.name])])


@pytest.mark.slow  # needs the export (~1 min)
@pytest.mark.parametrize("case", AUDIO_CASES, ids=[c.name for c in AUDIO_CASES])
def test_predict_tflite(case, trees, predict_tflite_results):
    result, lines = predict_tflite_results["audio"]
    assert result.rc == 1
    check_predict_line(case, lines[str(trees["audio"].files[case.name])])


# ----------------------------------------------------------------------------- the good files of each batch


@pytest.mark.slow  # needs the trained runs
@pytest.mark.parametrize("kind", ["video", "audio"])
def test_good_files_of_a_bad_batch_are_processed(kind, trees, index_results, preprocess_results, evaluate_results, predict_results):
    tree = trees[kind]
    cases = VIDEO_CASES if kind == "video" else AUDIO_CASES
    usable = tree.good + [c.file for c in cases if c.ok]
    _, manifest = index_results[kind]
    assert set(usable) <= set(manifest)
    result, errors, cached = preprocess_results[kind]
    assert sorted(cached) == sorted(usable)
    assert len(errors) == sum(not c.ok for c in cases)
    assert f"{len(usable)} clips cached, {len(errors)} skipped" in result.out
    _, metrics = evaluate_results[kind]
    assert metrics["num_clips"] == len(usable) and metrics["skipped"]["count"] == len(errors)
    result, lines = predict_results[kind]
    failed = sum(not c.predicted() for c in cases)
    total = len(batch_paths(tree))
    assert f"predict: {total} file(s), {total - failed} predicted, {failed} failed" in result.out
    for g in tree.good:
        assert ": error:" not in lines[str(tree.root / g)]


# largest |difference| and RMS difference to the 16-bit mono 16 kHz twin: each format's quantisation step, resampling ringing
TWIN_TOLERANCE = {"pcm_u8": (1 / 128, 0.005), "pcm_24": (1 / 32768, 2e-5), "stereo": (0.0, 0.0), "rate_44100": (0.05, 1e-3)}


@pytest.mark.slow  # needs the trained speech run
@pytest.mark.parametrize("name", sorted(FORMAT_TWINS))
def test_format_variants_decode_and_predict_like_the_original(name, trees, predict_results):
    """8-bit, 24-bit, stereo and 44.1 kHz WAVs: the waveform of the 16-bit mono 16 kHz file of the same sound, and its label."""
    from pipeline.media.audio import load_audio

    tree = trees["audio"]
    variant = tree.files[name]
    (twin,) = [t for t in tree.extra if t.name == f"twin_{name}.wav"]
    a, b = load_audio(variant, fc.SPEECH_RATE), load_audio(twin, fc.SPEECH_RATE)
    largest, rms = TWIN_TOLERANCE[name]
    assert a.shape == b.shape and np.abs(a - b).max() <= largest and np.sqrt(np.mean((a - b) ** 2)) <= rms
    _, lines = predict_results["audio"]
    top = [lines[str(p)].split(": ", 1)[1].split(",")[0].split() for p in (variant, twin)]  # [label, prob]
    assert top[0][0] == top[1][0] and abs(float(top[0][1]) - float(top[1][1])) <= 0.1, top


@pytest.mark.slow  # needs the trained speech run
def test_predict_a_folder_gives_every_media_entry_a_line(trees, speech_run):
    """A folder argument: every entry named like media gets its line (the FIFO, the link loop among them); exit status 1."""
    tree = trees["audio"]
    result = ok(cli("predict", "--run-dir", speech_run, tree.root))
    assert result.rc == 1
    entries = sorted(p for p in tree.root.rglob("*") if not p.is_dir())
    lines = result.out.splitlines()
    assert len(lines) == len(entries) + 1 and lines[-1].startswith(f"predict: {len(entries)} file(s)")
    for path in entries:
        assert sum(ln.startswith(f"{path}: ") for ln in lines) == 1, path


# ----------------------------------------------------------------------------- real processes: what reaches the terminal


def run_process(*argv, prefix=(), **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it: the CLI sets its own
    return subprocess.run([*prefix, *actrec_process(*argv)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, **kw)


# What a C library prints by itself that is not ours to silence here (see docs/reliability.md).
KNOWN_CHATTER = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


def caps_dropped_prefix() -> list[str] | None:
    """A command prefix under which root obeys file permissions (CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped),
    [] for a user that is not root, None when this machine cannot do it."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search"]
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "locked"
        probe.write_text("x")
        probe.chmod(0)
        if subprocess.run([*prefix, "cat", str(probe)], capture_output=True).returncode == 0:
            return None
    return prefix


@dataclass
class ProcessRun:
    index: subprocess.CompletedProcess
    predict: subprocess.CompletedProcess
    paths: list[Path]  # what predict was given
    permissions: bool = False  # whether the process obeyed file permissions (the unreadable entries were unreadable)
    locked_file: Path | None = None
    locked_dir: Path | None = None
    unreadable_index: subprocess.CompletedProcess | None = None


@pytest.fixture(scope="module")
def processes(trees, video_run, speech_run, work) -> dict[str, ProcessRun]:
    """`actrec index` and `actrec predict` of each tree in real processes (FFmpeg, libsndfile and TensorFlow write to the
    terminal by themselves). The speech one also gets a WAV and a word sub-folder with chmod 000, and runs with the
    capabilities that let root ignore permissions dropped (setpriv), so that they are unreadable to it as to a user."""
    out = {}
    for kind, tree in trees.items():
        what = "video" if kind == "video" else "speech"
        index = run_process("index", tree.root, "--out", work / f"manifest_process_{kind}.csv", "--kind", what)
        paths = batch_paths(tree)
        if kind == "video":
            out[kind] = ProcessRun(index, run_process("predict", "--run-dir", video_run, *paths), paths)
            continue
        prefix = caps_dropped_prefix()
        root = work / "unreadable"
        for word, hz in fc.WORDS.items():
            for s in range(2):
                fc.tone_wav(root / word / f"ok{s}_nohash_0.wav", hz)
        locked_file = fc.tone_wav(root / "no/locked_nohash_0.wav", fc.WORDS["no"])
        locked_dir = root / "yes/locked"
        fc.tone_wav(locked_dir / "inside_nohash_0.wav", fc.WORDS["yes"])
        locked_file.chmod(0)
        locked_dir.chmod(0)
        try:
            unreadable_index = run_process("index", root, "--out", work / "manifest_unreadable.csv", "--kind", "speech", prefix=prefix or [])
            predict = run_process("predict", "--run-dir", speech_run, *paths, root, locked_file, prefix=prefix or [])
        finally:
            locked_file.chmod(0o644)
            locked_dir.chmod(0o755)
        out[kind] = ProcessRun(index, predict, paths, prefix is not None, locked_file, locked_dir, unreadable_index)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["video", "audio"])
def test_a_real_process_prints_one_line_per_file(kind, processes, trees):
    run, tree = processes[kind], trees[kind]
    assert run.index.returncode == 0 and run.index.stderr == "", run.index.stderr
    cases = VIDEO_CASES if kind == "video" else AUDIO_CASES
    skipped = [c for c in cases if (c.index or ("kept" if c.ok else "skipped")) == "skipped"]
    assert sum(ln.strip().startswith("skipped ") for ln in run.index.stdout.splitlines()) == len(skipped)
    assert run.predict.returncode == 1
    warned = [f"warning: {tree.files[c.name]}: no audio track: classified from video only" for c in cases if c.index == "warning" and c.ok]
    assert [ln for ln in run.predict.stderr.splitlines() if ln.strip() and ln not in KNOWN_CHATTER] == warned, run.predict.stderr
    lines = run.predict.stdout.splitlines()
    for case in cases:
        (line,) = [ln for ln in lines if ln.startswith(f"{tree.files[case.name]}: ")]
        check_predict_line(case, line)
    for path in run.paths:
        assert sum(ln.startswith(f"{path}: ") for ln in lines) == 1 + (path == run.locked_file), path


@pytest.mark.slow
def test_unreadable_files_and_folders(processes):
    """chmod 000 on a WAV and on a word's sub-folder: one line each from index and predict. (This test process runs as
    root, for which os.access says everything is readable: it cannot check this in-process.)"""
    run = processes["audio"]
    if not run.permissions:
        pytest.skip("running as root without setpriv (or CAP_SETPCAP): permission bits do not stop root's reads")
    index = run.unreadable_index
    assert index.returncode == 0 and "Traceback" not in index.stderr, index.stderr
    assert "skipped no/locked_nohash_0.wav: file not readable (permissions)" in index.stdout
    assert "skipped yes/locked/: folder not readable (Permission denied)" in index.stdout
    assert " 4 clips " in index.stdout.splitlines()[0]
    lines = run.predict.stdout.splitlines()
    assert lines.count(f"{run.locked_file}: error: file not readable (permissions)") == 2  # in its folder, and given alone
    assert lines.count(f"{run.locked_dir}: error: folder not readable (Permission denied)") == 1
    good = [ln for ln in lines if ln.startswith(f"{run.locked_dir.parent.parent}/") and ": error:" not in ln]
    assert len(good) == 4


# ----------------------------------------------------------------------------- SIGKILL at chosen moments, then the same command


def count_files(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def kill_when(cmd: list[str], ready, timeout: float = 300) -> dict:
    """Start `cmd`, SIGKILL it as soon as ready() is true; {'finished': it ended before that, 'pid'}.

    Started in its own session so that its children (an export's converter) can be found and stopped afterwards."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.005)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return {"finished": finished, "pid": proc.pid, "returncode": proc.returncode}


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def preprocess_kills(work, action_data, video_run):
    """The action dataset (1-clip shards) preprocessed again in a new run dir, killed as soon as the first shard file
    exists, run again and killed when all of them exist (before or while index.json is written), then run again to the
    end. The video run's features are the uninterrupted run. Returns (its dir, killed dir, what each kill saw, last run)."""
    args = VIDEO_ARGS + [f"data.root={action_data}"]
    killed = work / "kills/preprocess_killed"
    shards = count_files(video_run / "features", "*.tfrecord")
    cmd = actrec_process("preprocess", "--run-dir", killed, "--no-progress", *sets(args))
    seen = []
    for moment in (1, shards):
        outcome = kill_when(cmd, lambda m=moment: count_files(killed / "features", "*.tfrecord") >= m)
        outcome.update(moment=moment, shards=count_files(killed / "features", "*.tfrecord"),
                       finished_index=(killed / "features/index.json").is_file(), present=files_of(killed / "features"))
        seen.append(outcome)
    observe(work, "preprocess_kills", [{k: v for k, v in o.items() if k != "present"} for o in seen])
    rerun = ok(cli("preprocess", "--run-dir", killed, "--no-progress", *sets(args)))
    return video_run, killed, seen, rerun


def observe(work: Path, key: str, value) -> None:
    """Keep what a fault test saw in WORK/observations.json (for docs/reliability.md)."""
    path = work / "observations.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1, default=str))


@pytest.mark.slow
def test_killed_preprocess_never_shows_a_partial_shard(preprocess_kills):
    clean, _, seen, _ = preprocess_kills
    reference = files_of(clean / "features")
    assert not seen[0]["finished"] and not seen[0]["finished_index"] and seen[0]["shards"] < len([n for n in reference if n.endswith(".tfrecord")])
    for outcome in seen:
        for name, content in outcome["present"].items():
            if name.endswith(".tfrecord"):  # a shard under its final name is whole: the bytes of the uninterrupted run
                assert content == reference[name], name


@pytest.mark.slow
def test_preprocess_resumed_after_sigkills_is_byte_identical(preprocess_kills):
    clean, killed, seen, rerun = preprocess_kills
    assert rerun.rc == 0
    got, expected = files_of(killed / "features"), files_of(clean / "features")
    shard_files = [n for n in expected if ".tfrecord" in n]
    assert [n for n in got if ".tfrecord" in n and not n.startswith(".")] == shard_files
    for name in shard_files:
        assert got[name] == expected[name], name
    assert json.loads(got["index.json"]) == json.loads(expected["index.json"])
    assert (killed / "preprocess_errors.csv").read_bytes() == (clean / "preprocess_errors.csv").read_bytes()
    assert not (killed / ".lock").exists()
    assert [n for n in got if n.startswith(".")] == []  # the killed writers' temporary files were removed with their lock


@pytest.fixture(scope="module")
def train_kills(work, video_run, action_data):
    """The video run's training again, on its features in a new run dir:
    1. stopped (SIGSTOP) as soon as epoch 1's checkpoint and history row exist, while it holds RUN/.lock: `actrec train`
       and `actrec preprocess` on the same run dir must refuse, naming it;
    2. killed (SIGKILL), which leaves its .lock behind;
    3. the same command again (in this process): it must take the dead writer's lock over and finish where it stopped.
    The video run is the uninterrupted run. Returns (its dir, killed dir, what each step saw)."""
    from pipeline.stages.train import read_history

    args = VIDEO_ARGS + [f"data.root={action_data}"]
    killed = work / "kills/train_killed"
    killed.mkdir(parents=True)
    os.symlink(video_run / "features", killed / "features")

    def epochs():
        return len(read_history(killed / "history.csv").get("epoch", []))

    proc = subprocess.Popen(actrec_process("train", "--run-dir", killed, "--no-progress", *sets(args)), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and epochs() < 1 and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGSTOP)
        seen = {"pid": proc.pid, "finished": proc.poll() is not None, "lock": read_lock(killed), "epochs_at_stop": epochs(),
                "checkpoint": sorted(p.name for p in (killed / "train_state/backup").glob("*"))}
        seen["refusals"] = {command: ok(cli(command, "--run-dir", killed, *sets(args))) for command in ("train", "preprocess")}
    finally:
        proc.kill()
        proc.wait()
    seen.update(epochs=epochs(), done=(killed / "train_done.json").is_file(), stale_lock=read_lock(killed))
    observe(work, "train_kill", {k: v for k, v in seen.items() if k != "refusals"})
    seen["rerun"] = ok(cli("train", "--run-dir", killed, "--no-progress", *sets(args)))
    seen["lock_after"] = (killed / ".lock").exists()
    return video_run, killed, seen


def read_lock(run: Path) -> dict | None:
    return json.loads((run / ".lock").read_text()) if (run / ".lock").is_file() else None


def history_rows(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_resumed_after_sigkill_has_the_same_epochs_and_history_rows(train_kills):
    clean, killed, seen = train_kills
    assert not (seen["finished"] or seen["done"]) and 1 <= seen["epochs"] < EPOCHS, seen
    assert seen["rerun"].rc == 0 and f"{EPOCHS} epochs" in seen["rerun"].out
    resumed, uninterrupted = history_rows(killed), history_rows(clean)
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in uninterrupted] == [str(e) for e in range(EPOCHS)]  # once each
    assert list(resumed[0]) == list(uninterrupted[0])  # the same columns
    assert resumed[0] == uninterrupted[0]  # the epoch before the kill: the same numbers
    assert json.loads((killed / "train_done.json").read_text())["epochs"] == EPOCHS
    assert not (killed / "train_state").exists()


@pytest.mark.slow
def test_train_resumed_after_sigkill_matches_the_uninterrupted_numbers(train_kills):
    """DESIGN.md: an interrupted train resumes where it stopped and produces the same result as an uninterrupted run."""
    clean, killed, _ = train_kills
    for a, b in zip(history_rows(killed), history_rows(clean)):
        for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(a[column]) == pytest.approx(float(b[column]), abs=1e-4), (a["epoch"], column)


@pytest.mark.slow
def test_a_second_writer_refuses_with_one_line_naming_the_first(train_kills):
    _, killed, seen = train_kills
    assert without_start(seen["lock"]) == {"pid": seen["pid"], "command": "train"}
    for command, refused in seen["refusals"].items():
        lines = refused.err.strip().splitlines()
        assert refused.rc == 2 and len(lines) == 1, (command, refused.err)
        assert lines[0] == (f"actrec: error: {killed}: `actrec train` (pid {seen['pid']}) is writing this run dir; "
                            f"wait for it to finish or stop it")


@pytest.mark.slow
def test_a_dead_writers_lock_is_taken_over(train_kills):
    _, _, seen = train_kills
    assert without_start(seen["stale_lock"]) == {"pid": seen["pid"], "command": "train"}  # the SIGKILLed writer's, left behind
    assert seen["rerun"].rc == 0 and not seen["lock_after"]


def without_start(lock: dict) -> dict:
    """A lock's contents without the writer's start time (checked to be a time: seconds since the epoch)."""
    assert isinstance(lock.get("started"), float) and lock["started"] > 1.7e9, lock
    return {k: v for k, v in lock.items() if k != "started"}


def test_a_lock_whose_pid_now_names_another_process_is_taken_over(tmp_path):
    """The pid a killed writer recorded can be reused by a new process: the recorded start time tells them apart."""
    from pipeline.errors import UserError
    from pipeline.rundir import RunDir, process_started

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    other = os.getppid()  # a live process that is not the writer
    (run.path / ".lock").write_text(json.dumps({"pid": other, "command": "train", "started": process_started(other) - 3600.0}))
    with run.lock("export"):
        assert json.loads((run.path / ".lock").read_text())["pid"] == os.getpid()
    (run.path / ".lock").write_text(json.dumps({"pid": other, "command": "train", "started": process_started(other)}))
    with pytest.raises(UserError, match=rf"`actrec train` \(pid {other}\) is writing this run dir"):
        with run.lock("export"):
            pass
    (run.path / ".lock").write_text(json.dumps({"pid": other, "command": "train"}))  # a lock of an earlier version: no start time
    with pytest.raises(UserError, match="is writing this run dir"):
        with run.lock("export"):
            pass


def test_taking_the_lock_removes_the_temp_files_of_dead_writers(tmp_path):
    """What a writer killed mid-write leaves (a temporary named by its PID) goes when the next writer takes the lock;
    the temporary files of a running process stay, and so do files not named like temporaries."""
    from pipeline.files import temp_path
    from pipeline.rundir import RunDir

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    run = RunDir(tmp_path / "run")
    (run.path / "features").mkdir(parents=True)
    dead = [run.path / f".config.yaml.{gone}-k3j_x9a1.tmp", run.features / f".train-00000-of-00001.tfrecord.{gone}.tmp",
            run.features / f".encoder.weights.h5.{gone}.weights.h5", run.path / f".model.keras.{gone}.keras"]
    kept = [temp_path(run.features / "val-00000-of-00001.tfrecord"), run.path / ".notes.1.txt", run.path / f"report.{gone}.tmp"]
    for path in dead + kept:
        path.write_bytes(b"partial")
    with run.lock("preprocess"):
        assert [p.name for p in dead if p.exists()] == [] and [p.name for p in kept if not p.exists()] == []


def descendants(pid: int) -> list[int]:
    """Child processes of pid, recursively (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def export_kill(work, speech_run, speech_export):
    """A copy of the exported speech run exported again and SIGKILLed during conversion, then run again in full."""
    from pipeline.deploy.convert import STATUS_FILE

    run = work / "kills/export_run"
    shutil.copytree(speech_run, run, symlinks=True)
    before = files_of(run / "export")
    proc = subprocess.Popen(actrec_process("export", "--run-dir", run, "--formats", "float", "--no-progress"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: dict = {"pid": proc.pid}
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not (run / f".export.tmp-{proc.pid}" / STATUS_FILE).is_file():
            time.sleep(0.005)
        seen["finished"] = proc.poll() is not None
        seen["lock_held"] = read_lock(run)
        converters = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)
        seen["converters_after_kill"] = [c for c in converters if running(c)]
        seen["work_dirs_after_kill"] = sorted(p.name for p in run.glob(".export.*"))
        seen["export_after_kill"] = files_of(run / "export")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the converter the killed export left behind (its process group)
        except ProcessLookupError:
            pass
        time.sleep(0.5)
    seen["rerun"] = ok(cli("export", "--run-dir", run, "--formats", "float", "--no-progress"))
    seen["leftovers"] = sorted(p.name for p in run.glob(".export.*"))
    observe(work, "export_kill", {k: v for k, v in seen.items() if k not in ("export_after_kill", "rerun")})
    return run, before, seen


@pytest.mark.slow
def test_export_killed_during_conversion_keeps_the_previous_export(export_kill):
    _, before, seen = export_kill
    assert not seen["finished"] and seen["work_dirs_after_kill"] == [f".export.tmp-{seen['pid']}"]  # killed mid-conversion
    assert seen["export_after_kill"] == before


@pytest.mark.slow
def test_export_rerun_after_sigkill_is_complete_and_cleans_up(export_kill, speech_export):
    run, _, seen = export_kill
    assert seen["rerun"].rc == 0 and seen["leftovers"] == []
    got, expected = files_of(run / "export"), files_of(speech_export)
    assert sorted(got) == sorted(expected)
    for name in ("labels.txt", "preprocessing.json", "model_float.tflite", "head_float.tflite"):
        assert got[name] == expected[name], name  # the converter is deterministic: byte-identical to the uninterrupted export


@pytest.mark.slow
def test_killed_export_leaves_no_converter_running(export_kill):
    """The converter child dies with the export (convert.die_with_parent): nothing keeps writing into .export.tmp-PID."""
    _, _, seen = export_kill
    assert seen["converters_after_kill"] == []


@pytest.mark.slow
def test_export_holds_the_run_dir_lock(export_kill):
    """While it converts, RUN/.lock names the export: a train --overwrite or preprocess --overwrite would refuse."""
    _, _, seen = export_kill
    assert without_start(seen["lock_held"]) == {"pid": seen["pid"], "command": "export"}


# ----------------------------------------------------------------------------- a full disk (a file size limit)

# Where the first write fails under each limit (bytes): the first TFRecord shard of the speech run (TensorFlow's writer,
# whose error names the file only in its message; its MFCC shards are ~25 kB), the frame encoder's weights of the action
# run (100 kB: h5py builds them in memory, then files.atomic_write_bytes writes them, as it writes config.yaml and every
# other Python write: a third limit failing at config.yaml would test that same function again).
LIMITS = {"tfrecord_shard": ("speech", 16000), "keras_weights": ("video", 50000)}
_limited: dict = {}


def limited_preprocess(name: str, work: Path, data: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess, list]:
    """`actrec preprocess` in a process whose files may not grow past LIMITS[name] (RLIMIT_FSIZE: writes fail with
    EFBIG, as on a full disk), once per name."""
    if name not in _limited:
        kind, limit = LIMITS[name]
        run = work / f"disk_full/{name}"
        args = (VIDEO_ARGS if kind == "video" else SPEECH_ARGS) + [f"data.root={data[kind]}"]

        def limit_file_size():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it: the CLI sets its own
        result = subprocess.run(actrec_process("preprocess", "--run-dir", run, "--no-progress", *sets(args)), cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size)
        _limited[name] = (run, result, args)
        observe(work, f"disk_full_{name}", {"returncode": result.returncode, "stderr": result.stderr[-1500:],
                                             "left": sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())})
    return _limited[name]


@pytest.fixture(scope="module")
def datasets(action_data, speech_data):
    return {"video": action_data, "speech": speech_data}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LIMITS))
def test_a_failed_write_is_one_line_naming_the_file(name, work, datasets):
    run, result, _ = limited_preprocess(name, work, datasets)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("actrec: error: ") and "Traceback" not in result.stderr, result.stderr
    assert str(run) in lines[0] and "File too large" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LIMITS))
def test_after_a_failed_write_nothing_is_trusted_and_a_rerun_gives_the_uninterrupted_features(name, work, datasets, video_run, speech_run):
    run, result, args = limited_preprocess(name, work, datasets)
    assert result.returncode != 0 and not (run / "features/index.json").exists()
    refused = ok(cli("train", "--run-dir", run, *sets(args)))
    assert refused.rc == 2 and "no cached features" in refused.err
    rerun = ok(cli("preprocess", "--run-dir", run, "--no-progress", *sets(args)))
    assert rerun.rc == 0
    reference = (video_run if LIMITS[name][0] == "video" else speech_run) / "features"
    got, expected = files_of(run / "features"), files_of(reference)
    for shard in [n for n in expected if n.endswith(".tfrecord")]:
        assert got[shard] == expected[shard], shard
    assert json.loads(got["index.json"]) == json.loads(expected["index.json"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LIMITS))
def test_no_temp_file_outlives_a_failed_write_and_its_rerun(name, work, datasets):
    run, _, args = limited_preprocess(name, work, datasets)
    if not (run / "features/index.json").exists():
        ok(cli("preprocess", "--run-dir", run, "--no-progress", *sets(args)))
    assert [p.name for p in run.rglob(".*") if p.is_file()] == []
