"""A corpus of bad (and oddly-shaped but valid) media files for the fault-injection suite (tests/test_faults.py).

Each `Case` writes one file into a class folder of a dataset tree and says what actrec should make of it:
`ok=True` means every command must use it (predict it, cache it, score it); `ok=False` means one line naming
the file and the reason, and the rest of the batch goes on. Everything is real media written with PyAV and
soundfile, small and fast to make (the 10-minute WAV is ~19 MB of PCM, written in well under a second).

    video cases   (an audio-visual action run: classes Fast, Slow)   write_video_case(case, root)
    audio cases   (a speech run: words no, yes)                       write_audio_case(case, root)

It also builds, once per pytest process, the tiny runs that several modules read (shared_speech_run,
shared_float_export): training and exporting them once instead of once per module is most of a minute each.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

from tests.media_factory import write_ucf101_lists, write_video

SPEECH_RATE = 16000
VIDEO_CLASSES = {"Fast": (12, 24, 440.0), "Slow": (30, 15, 1500.0)}  # frames, fps, tone of each class's clips
WORDS = {"no": 1500.0, "yes": 440.0}  # a speech run's "word" is a tone


@dataclass(frozen=True)
class Case:
    name: str  # test id
    file: str  # path relative to the dataset root: <class>/<file name>
    ok: bool  # must be used (True) or reported on one line (False)
    reason: str = ""  # a substring of the reason every command gives (ok=False)
    index: str = ""  # what `actrec index` does when it differs from the rest: "kept", "warning", "skipped"
    predict_ok: bool | None = None  # predict's verdict when it differs from `ok` (predict has no dataset root)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.file.split("/", 1)[0]

    def predicted(self) -> bool:
        return self.ok if self.predict_ok is None else self.predict_ok


# ----------------------------------------------------------------------------- writers of good media


def tone(hz: float, seconds: float, rate: int, start: float = 0.2, length: float = 0.6, amplitude: float = 0.4) -> np.ndarray:
    """float32 [seconds * rate]: silence with a sine at hz from `start` for `length` seconds."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.where((t >= start) & (t < start + length), amplitude * np.sin(2 * np.pi * hz * t), 0.0).astype(np.float32)


def tone_wav(path: Path, hz: float, seconds: float = 1.0, rate: int = SPEECH_RATE, subtype: str = "PCM_16", channels: int = 1,
             **kw) -> Path:
    wave = tone(hz, seconds, rate, **kw)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, data, rate, subtype=subtype)
    return path


def class_clip(path: Path, label: str, variant: int = 0) -> Path:
    """A good clip of an action class (its frame count, frame rate and tone), with audio."""
    frames, fps, hz = VIDEO_CLASSES[label]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, num_frames=frames + variant, fps=fps, audio_seconds=0.8, tone_hz=hz)


def remux(src: Path, dst: Path, faststart: bool = False, streams: str = "all") -> Path:
    """Copy src's packets into a new MP4 (no re-encoding): moov first with faststart; streams 'all', 'audio' or 'video'.

    The muxer interleaves the streams by time, so a copy cut in the middle loses the end of both tracks."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(src)) as source, av.open(str(dst), "w", format="mp4", options=options) as out:
        chosen = [s for s in source.streams if streams == "all" or s.type == streams]
        mapping = {s.index: out.add_stream_from_template(s) for s in chosen}
        for packet in source.demux(chosen):
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)
    return dst


def audio_only_mp4(path: Path, hz: float = 440.0, seconds: float = 1.0, rate: int = 22050) -> Path:
    """An MP4 holding one AAC track and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = tone(hz, seconds, rate, start=0.0, length=seconds)
        size = stream.codec_context.frame_size or 1024
        for start in range(0, len(samples), size):
            chunk = np.pad(samples[start : start + size], (0, max(0, size - len(samples[start : start + size]))))
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def one_frame_clip(path: Path, hz: float) -> Path:
    """A one-frame H.264 MP4 with 0.8 s of sound."""
    return write_video(path, num_frames=1, fps=15, audio_seconds=0.8, tone_hz=hz)


def truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def float_wav_with(path: Path, value: float, hz: float = 440.0) -> Path:
    """A float32 WAV (1 s, 16 kHz) holding a tone and 10 samples of `value` (NaN or inf)."""
    wave = tone(hz, 1.0, SPEECH_RATE)
    wave[5000:5010] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, SPEECH_RATE, subtype="FLOAT")
    return path


def long_noise_wav(path: Path, seconds: float, hz: float = 440.0) -> Path:
    """`seconds` of quiet noise with the word's tone in the middle second, PCM_16 (10 min = 19 MB)."""
    n = int(seconds * SPEECH_RATE)
    rng = np.random.default_rng(0)
    wave = rng.integers(-60, 61, n, dtype=np.int16)  # ~-55 dBFS noise, made as int16 at once (fast)
    mid = n // 2 - SPEECH_RATE // 2
    wave[mid : mid + SPEECH_RATE] += (tone(hz, 1.0, SPEECH_RATE) * 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, SPEECH_RATE, subtype="PCM_16")
    return path


def random_bytes(path: Path, n: int = 20000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


# ----------------------------------------------------------------------------- the corpus

UNICODE_VIDEO = "Slow/vidéo clip ü 日本 (1).mp4"
UNICODE_AUDIO = "yes/spk 日本 ü_nohash_0.wav"

VIDEO_CASES = [
    Case("zero_byte", "Fast/zero.mp4", False, "empty file (0 bytes)"),
    Case("random_bytes", "Fast/random.mp4", False, "corrupt, truncated or not a"),
    Case("truncated_moov_missing", "Slow/moov_missing.mp4", False, "corrupt, truncated or not a",
         notes="moov atom at the end of the file, cut off with the last 40 %"),
    Case("truncated_mid_stream", "Slow/cut_mid_stream.mp4", False, "truncated",
         notes="moov first (faststart), file cut at 55 %: headers intact, the tracks end early"),
    Case("wav_named_mp4", "Fast/a_wav.mp4", False, "no video stream"),
    Case("no_audio_track", "Fast/silent_film.mp4", True, index="warning",
         notes="audio-visual run: classified from video only, with a one-line warning"),
    Case("audio_only_mp4", "Slow/audio_only.mp4", False, "no video stream"),
    Case("one_frame", "Fast/one_frame.mp4", True),
    Case("unicode_and_spaces", UNICODE_VIDEO, True),
    Case("symlink_out_of_root", "Fast/outside_link.mp4", False, "outside the dataset root", predict_ok=True,
         notes="predict takes any file it is given; dataset commands keep to the root"),
    Case("symlink_loop", "Slow/loop.mp4", False, "link loop"),
    Case("dangling_symlink", "Fast/dangling.mp4", False, "broken symbolic link"),
    Case("fifo", "Slow/pipe.mp4", False, "not a regular file"),
]

AUDIO_CASES = [
    Case("zero_byte", "no/zero_nohash_0.wav", False, "empty file (0 bytes)"),
    Case("random_bytes", "no/random_nohash_0.wav", False, "cannot open as"),
    Case("truncated_wav", "yes/cut_nohash_0.wav", False, "truncated", notes="data chunk shorter than its header says"),
    Case("nan_samples", "no/nan_nohash_0.wav", False, "non-finite", index="kept", notes="index reads headers, not samples"),
    Case("inf_samples", "yes/inf_nohash_0.wav", False, "non-finite", index="kept"),
    Case("mp4_named_wav", "yes/an_mp4_nohash_0.wav", True,
         notes="libsndfile refuses it, FFmpeg reads its AAC track: the content decides, not the extension"),
    Case("video_only_mp4_named_wav", "no/silent_mp4_nohash_0.wav", False, "no audio track"),
    Case("short_0.1s", "no/short_nohash_0.wav", True, notes="zero-padded to the run's window"),
    Case("long_10min", "yes/long_nohash_0.wav", True, notes="centre 1 s used"),
    Case("pcm_u8", "yes/u8_nohash_0.wav", True),
    Case("pcm_24", "no/p24_nohash_0.wav", True),
    Case("stereo", "yes/stereo_nohash_0.wav", True),
    Case("rate_44100", "no/r44k_nohash_0.wav", True),
    Case("unicode_and_spaces", UNICODE_AUDIO, True),
    Case("symlink_out_of_root", "no/outside_nohash_0.wav", False, "outside the dataset root", predict_ok=True),
    Case("symlink_loop", "yes/loop_nohash_0.wav", False, "link loop"),
    Case("fifo", "yes/pipe_nohash_0.wav", False, "not a regular file"),
]

# Format variants that must give the same prediction as the 16-bit mono 16 kHz original of the same tone.
FORMAT_TWINS = {"pcm_u8": ("yes", "PCM_U8", 1, SPEECH_RATE), "pcm_24": ("no", "PCM_24", 1, SPEECH_RATE),
                "stereo": ("yes", "PCM_16", 2, SPEECH_RATE), "rate_44100": ("no", "PCM_16", 1, 44100)}


def write_video_case(case: Case, root: Path, outside: Path) -> Path:
    """Write `case` under root (outside: a folder beyond the root, for symlink targets); returns its path."""
    path = root / case.file
    path.parent.mkdir(parents=True, exist_ok=True)
    hz = VIDEO_CLASSES[case.label][2]
    scratch = outside / f"src_{case.name}.mp4"
    if case.name == "zero_byte":
        path.write_bytes(b"")
    elif case.name == "random_bytes":
        random_bytes(path)
    elif case.name == "truncated_moov_missing":
        class_clip(path, case.label, 3)
        truncate(path, 0.6)
    elif case.name == "truncated_mid_stream":
        remux(class_clip(scratch, case.label, 3), path, faststart=True)
        truncate(path, 0.55)
    elif case.name == "wav_named_mp4":
        tone_wav(scratch.with_suffix(".wav"), hz)
        shutil.copy(scratch.with_suffix(".wav"), path)
    elif case.name == "no_audio_track":
        write_video(path, num_frames=VIDEO_CLASSES[case.label][0], fps=VIDEO_CLASSES[case.label][1])
    elif case.name == "audio_only_mp4":
        audio_only_mp4(path, hz)
    elif case.name == "one_frame":
        one_frame_clip(path, hz)
    elif case.name == "unicode_and_spaces":
        class_clip(path, case.label, 1)
    elif case.name == "symlink_out_of_root":
        os.symlink(class_clip(outside / "linked_target.mp4", case.label, 2), path)
    elif case.name == "symlink_loop":
        os.symlink(path.name, path)
    elif case.name == "dangling_symlink":
        os.symlink(outside / "gone.mp4", path)
    elif case.name == "fifo":
        os.mkfifo(path)
    else:
        raise KeyError(case.name)
    return path


def write_audio_case(case: Case, root: Path, outside: Path) -> Path:
    path = root / case.file
    path.parent.mkdir(parents=True, exist_ok=True)
    hz = WORDS[case.label]
    if case.name == "zero_byte":
        path.write_bytes(b"")
    elif case.name == "random_bytes":
        random_bytes(path, seed=1)
    elif case.name == "truncated_wav":
        truncate(tone_wav(path, hz), 0.5)
    elif case.name == "nan_samples":
        float_wav_with(path, np.nan, hz)
    elif case.name == "inf_samples":
        float_wav_with(path, np.inf, hz)
    elif case.name == "mp4_named_wav":
        audio_only_mp4(path.with_suffix(".tmp.mp4"), hz, rate=SPEECH_RATE).rename(path)
    elif case.name == "video_only_mp4_named_wav":
        write_video(path.with_suffix(".tmp.mp4"), num_frames=8).rename(path)
    elif case.name == "short_0.1s":
        tone_wav(path, hz, seconds=0.1, start=0.0, length=0.1)
    elif case.name == "long_10min":
        long_noise_wav(path, 600.0, hz)
    elif case.name in FORMAT_TWINS:
        word, subtype, channels, rate = FORMAT_TWINS[case.name]
        tone_wav(path, WORDS[word], rate=rate, subtype=subtype, channels=channels)
    elif case.name == "unicode_and_spaces":
        tone_wav(path, hz)
    elif case.name == "symlink_out_of_root":
        os.symlink(tone_wav(outside / "linked_target.wav", hz), path)
    elif case.name == "symlink_loop":
        os.symlink(path.name, path)
    elif case.name == "fifo":
        os.mkfifo(path)
    else:
        raise KeyError(case.name)
    return path


# ----------------------------------------------------------------------------- datasets


def video_training_set(root: Path) -> Path:
    """Two action classes x 3 groups x 2 clips (UCF101 layout; group 1 is the test split), each class its own
    motion speed and tone: what a tiny audio-visual run learns in seconds."""
    train, test = [], []
    for label in VIDEO_CLASSES:
        for g in (1, 2, 3):
            for k in (1, 2):
                rel = f"{label}/v_{label}_g{g:02d}_c{k:02d}.mp4"
                class_clip(root / rel, label, g + k)
                (test if g == 1 else train).append(rel)
    return write_ucf101_lists(root, list(VIDEO_CLASSES), train, test)


def speech_training_set(root: Path, speakers: int = 6) -> Path:
    """Speech Commands layout: each word a tone, `speakers` variants each; speaker 0 tests, speaker 1 validates."""
    for word, hz in WORDS.items():
        for s in range(speakers):
            tone_wav(root / word / f"spk{s:05d}_nohash_0.wav", hz * (1 + 0.02 * s), start=0.05 * s, amplitude=0.2 + 0.05 * s)
    (root / "validation_list.txt").write_text("".join(f"{w}/spk00001_nohash_0.wav\n" for w in WORDS))
    (root / "testing_list.txt").write_text("".join(f"{w}/spk00000_nohash_0.wav\n" for w in WORDS))
    return root


def hostile_video_tree(root: Path, outside: Path) -> tuple[list[str], dict[str, Path]]:
    """Folder layout (no split files): 2 good clips per class plus every video case.
    Returns (relative paths of the good clips, {case name: path})."""
    good = []
    for label in VIDEO_CLASSES:
        for k in (1, 2):
            rel = f"{label}/good_{label}_{k}.mp4"
            class_clip(root / rel, label, k)
            good.append(rel)
    outside.mkdir(parents=True, exist_ok=True)
    return good, {c.name: write_video_case(c, root, outside) for c in VIDEO_CASES}


def hostile_audio_tree(root: Path, outside: Path) -> tuple[list[str], dict[str, Path]]:
    """Folder layout (no split lists, so `evaluate --data` scores every file): 3 good WAVs per word plus every audio case."""
    good = []
    for word, hz in WORDS.items():
        for s in range(3):
            rel = f"{word}/good{s}_nohash_0.wav"
            tone_wav(root / rel, hz * (1 + 0.02 * s))
            good.append(rel)
    outside.mkdir(parents=True, exist_ok=True)
    return good, {c.name: write_audio_case(c, root, outside) for c in AUDIO_CASES}


def reference_twin(case: Case, folder: Path) -> Path:
    """The 16-bit mono 16 kHz original of a FORMAT_TWINS case."""
    word = FORMAT_TWINS[case.name][0]
    return tone_wav(folder / f"twin_{case.name}.wav", WORDS[word])


# ----------------------------------------------------------------------------- runs shared by several test modules

# A speech run (audio_rnn over MFCCs, words no/yes of speech_training_set): the TINY settings of tests/conftest.py, a
# one-way GRU with no attention or augmentation (half the tracing time) and a quick export. test_faults, test_predict
# and test_litert read it (and its float export); a test that changes it copies it first.
SPEECH_ARGS = (["data.kind=speech", "preprocess.modalities=[audio]", "preprocess.audio_seconds=1.0", "preprocess.workers=0",
                "model.name=audio_rnn", "model.units=8", "train.batch_size=4", "train.early_stopping=0", "model.dropout=0.0",
                "train.learning_rate=0.01", "model.bidirectional=false", "model.pooling=last", "train.augment=false",
                "export.latency_runs=2", "export.representative_samples=4", "train.epochs=8"])
_SHARED: dict = {}


def shared_speech_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, run dir): speech_training_set preprocessed and trained with SPEECH_ARGS, once per pytest process."""
    if "speech" not in _SHARED:
        from contextlib import redirect_stdout
        from io import StringIO

        from pipeline.stages.preprocess import preprocess
        from pipeline.stages.train import train

        base = tmp_path_factory.mktemp("shared_speech")
        root, run = speech_training_set(base / "commands"), base / "run"
        args = SPEECH_ARGS + [f"data.root={root}"]
        with redirect_stdout(StringIO()):
            preprocess(None, run, args, progress=False)
            train(None, run, args, progress=False)
        _SHARED["speech"] = (root, run)
    return _SHARED["speech"]


def shared_float_export(run: Path) -> Path:
    """RUN/export with model_float.tflite, exported once per pytest process (`actrec export --formats float`)."""
    key = ("export", str(run))
    if key not in _SHARED:
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from pipeline.cli import main

        out, err = StringIO(), StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["export", "--run-dir", str(run), "--formats", "float", "--no-progress"])
        assert rc == 0 and "Traceback" not in err.getvalue(), err.getvalue()
        assert (run / "export/model_float.tflite").is_file()
        _SHARED[key] = run / "export"
    return _SHARED[key]


def shared_copy(run: Path, tmp_path_factory, name: str) -> Path:
    """A copy of a read-mostly session run (tests/conftest.py's trained_run), made once per pytest process and name."""
    key = ("copy", name)
    if key not in _SHARED:
        _SHARED[key] = tmp_path_factory.mktemp(name) / "run"
        shutil.copytree(run, _SHARED[key], symlinks=True)
    return _SHARED[key]


__all__ = ["AUDIO_CASES", "VIDEO_CASES", "Case", "FORMAT_TWINS", "SPEECH_ARGS", "shared_copy", "shared_float_export",
           "shared_speech_run"]
