"""Detection on a stream: a long recording (or video) assembled from a split's clips, and its detections scored.

    the split's rows (keywords, other words, _silence_ windows of the background recordings)
        --assemble_stream (random order, 0.5-2 s of background between words, optional minutes of non-keywords after)-->
    waveform float32 [N] + events [(start s, end s, label)] (every word: keywords, and other words as _unknown_)
    the split's action clips --assemble_video (one per class, random order, back to back, centre squares)-->
    an MP4 + events [(start s, end s, action)]
        --StreamingClassifier.run--> probabilities [hops, K] (and `pauses`: PauseGate per hop)
        --score_detections (KeywordDetector at a threshold)-->
    detection rate (keyword events whose label fired from their start to `late` s after their end) and false accepts
    per hour (every other detection)

Used by `actrec demo` (short streams of unseen speakers and actors) and benchmarks/stream.py (the long one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.datasets import first_clip_of_each_class, resolve_rows
from pipeline.labels import REJECT_LABELS, SILENCE
from pipeline.media.audio import load_audio
from pipeline.runtime.stream import KeywordDetector, PauseGate

LATE = 0.5  # seconds after a keyword's end in which its detection still counts


def clip_audio(root: Path, row, sample_rate: int) -> np.ndarray:
    """The row's audio: a whole file, or a 1-s window of a background recording (row.start)."""
    waveform = load_audio(root / row.path, sample_rate)
    if row.start is None:
        return waveform
    begin = round(row.start * sample_rate)
    return waveform[begin : begin + sample_rate]


def assemble_stream(cfg, seed: int = 0, negative_minutes: float = 0.0, split: str = "test", max_words: int | None = None) -> tuple[np.ndarray, list[tuple[float, float, str]], float]:
    """(stream float32 [N], word events [(start s, end s, label)], seconds of stream) from the split's clips.

    Every keyword and other word of the split once (at most max_words of them), in random order, each after a gap of
    0.5-2 s of the split's background windows at a random gain; then negative_minutes of other words and background.
    Every word is an event, the other words under their reject label (`_unknown_`): only keywords are to be detected.
    """
    rng = np.random.default_rng(seed)
    sr = cfg.preprocess.sample_rate
    root = Path(cfg.data.root)
    rows = [r for r in resolve_rows(cfg)[0] if r.split == split]
    fillers = [clip_audio(root, r, sr) for r in rows if r.label == SILENCE]
    words = [(r.label, clip_audio(root, r, sr)) for r in rows if r.label != SILENCE]
    others = [w for w in words if w[0] in REJECT_LABELS]
    if not fillers or not words:
        raise ValueError(f"the {split} split needs keywords and _silence_ windows (a data.keywords run)")
    pieces, events, t = [], [], 0.0

    def add(x: np.ndarray) -> float:
        nonlocal t
        pieces.append(x.astype(np.float32))
        start, t = t, t + len(x) / sr
        return start

    def gap() -> None:
        seconds = rng.uniform(0.5, 2.0)
        noise = np.concatenate([fillers[rng.integers(len(fillers))] for _ in range(int(np.ceil(seconds)))])
        add(rng.uniform(0.1, 1.0) * noise[: round(seconds * sr)])

    for k in rng.permutation(len(words))[:max_words]:
        label, audio = words[k]
        gap()
        start = add(audio)
        events.append((start, t, label))
    speech_end = t
    while t - speech_end < 60 * negative_minutes and others:
        gap()
        label, audio = others[rng.integers(len(others))]
        start = add(audio)
        events.append((start, t, label))
    return np.concatenate(pieces), events, t


def assemble_video(cfg, path: Path, seed: int = 0, split: str = "test", size: int = 240,
                   fps: int = 15, sample_rate: int | None = None) -> tuple[list[tuple[float, float, str]], float]:
    """Write one clip of each class of the split (the first of each, in random order) back to back into an MP4 at
    `fps`, each frame centre-cropped to a `size` x `size` square as preprocessing crops it (landscape and portrait
    clips alike), with each clip's sound at `sample_rate` (None: no sound track; a clip without sound: silence)
    -> (events [(start s, end s, label)], seconds)."""
    from data_prep.actions import write_mp4
    from pipeline.media.audio import load_audio
    from pipeline.media.video import stream_frames

    rng = np.random.default_rng(seed)
    clips = list(first_clip_of_each_class(cfg, split).items())
    events, frames, sound = [], [], []
    for k in rng.permutation(len(clips)):
        label, clip = clips[k]
        start = len(frames) / fps
        frames += [np.ascontiguousarray(rgb[..., ::-1]) for _, _, rgb in stream_frames(clip, size, rate=fps)]  # BGR for the writer
        events.append((start, len(frames) / fps, label))
        if sample_rate:  # the clip's sound from its start, cut or padded to its frames' time
            length = round((len(frames) / fps - start) * sample_rate)
            samples = load_audio(clip, sample_rate, absent_ok=True)[:length]
            sound.append(np.pad(samples, (0, length - len(samples))))
    audio = np.concatenate(sound)[None].astype(np.float32) if sample_rate else None
    write_mp4(path, iter(frames), fps, (size, size), audio, sample_rate or 0)
    return events, len(frames) / fps


def pauses(waveform: np.ndarray, hop_samples: int, hop_seconds: float, drop_db: float = 10.0) -> np.ndarray:
    """PauseGate over a waveform's whole hops: bool [hops], whether each hop's keywords count."""
    gate = PauseGate(hop_seconds, drop_db)
    hops = len(waveform) // hop_samples
    return np.array([gate.update(hop) for hop in waveform[: hops * hop_samples].reshape(hops, hop_samples)], bool)


def detect(probabilities: np.ndarray, labels: list[str], hop_seconds: float, threshold: float, warmup: float = 0.0,
           pause: np.ndarray | None = None) -> list:
    """KeywordDetector (default smoothing and refractory) over per-hop probabilities [hops, K], with each hop's
    PauseGate answer bool [hops] if given -> [Detection]."""
    detector = KeywordDetector(labels, hop_seconds, threshold=threshold, warmup=warmup)
    gate = np.ones(len(probabilities), bool) if pause is None else pause
    return [d for p, open_ in zip(probabilities, gate) if (d := detector.update(p, pause=bool(open_))) is not None]


def keyword_events(events: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The events to detect: every one but the other words and silences (REJECT_LABELS)."""
    return [e for e in events if e[2] not in REJECT_LABELS]


def score_detections(detections: list, events: list[tuple[float, float, str]], seconds: float, late: float = LATE) -> dict:
    """Detections against the events of an assembled stream: detection rate of its keywords, false accepts (count, per
    hour: every detection that is not its keyword's first from its start to `late` s after its end)."""
    keywords = keyword_events(events)
    hit = [False] * len(keywords)
    false_accepts = 0
    for d in detections:
        match = next((i for i, (s, e, label) in enumerate(keywords) if s <= d.time <= e + late and label == d.label and not hit[i]), None)
        if match is None:
            false_accepts += 1
        else:
            hit[match] = True
    return {"detected": sum(hit), "keywords": len(keywords), "detection_rate": sum(hit) / max(len(keywords), 1),
            "false_accepts": false_accepts, "false_accepts_per_hour": false_accepts / (seconds / 3600)}
