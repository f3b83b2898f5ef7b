"""A held-out speech set in voices the models never trained on: another synthesiser (CMU Flite).

The embedded dataset is spoken by espeak-ng; a model that learned espeak-ng's voices rather than the
words fails on other voices. Flite's voices (kal, kal16, awb, rms, slt: diphone and clustergen
synthesis, other speakers, other prosody) are as far from espeak-ng as this machine can get without
recordings. Never train on this set: it measures generalisation.

    flite -voice V (pitch mean, duration stretch varied) --> trim --> random place in a 1-s window
        --> level, maybe noise at 10-20 dB -->  DIR/<word>/<voice>-<variant>_nohash_0.wav (16 kHz mono int16)
    DIR/_background_noise_/<name>.wav      noise unlike the generator's (traffic, fan, rain, typing, cafe)

Layout `folders` (no split lists): `actrec evaluate --data DIR` scores every file, keyword folders as
their keyword, the other words as `_unknown_`, the noise cut into 1-s `_silence_` windows.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy import signal

from data_prep.command_noise import noise, speech_babble
from data_prep.commands import AUX_WORDS, COMMAND_WORDS, wav_bytes
from pipeline.errors import UserError
from pipeline.files import atomic_write_bytes
from pipeline.labels import BACKGROUND_NOISE

SAMPLE_RATE = 16000
VOICES = ("kal", "kal16", "awb", "rms", "slt")
# Words neither commands nor the generator's auxiliary words: unknown to the model in every sense.
OTHER_WORDS = ("green", "paper", "coffee", "bottle", "silver", "garden", "kitchen", "little", "maybe", "nothing",
               "orange", "pencil", "river", "summer", "thank", "doctor", "monkey", "button", "lemon", "travel")
NOISES = ("traffic", "fan", "rain", "typing", "cafe")


def find_flite() -> str:
    path = shutil.which("flite")
    if path is None:
        raise UserError("flite not found on PATH: install it with `apt-get install flite` (Debian/Ubuntu) or "
                        "`brew install flite` (macOS); it speaks the held-out voices")
    return path


def flite_word(flite: str, word: str, voice: str, pitch: float, stretch: float) -> np.ndarray:
    """One word from Flite, trimmed to its spoken part: float64 [<= 0.95 s at 16 kHz]."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "w.wav"
        subprocess.run([flite, "-voice", voice, "-t", word, "-o", str(wav), "--setf", f"int_f0_target_mean={pitch:.0f}",
                        "--setf", f"duration_stretch={stretch:.2f}"], check=True, capture_output=True, timeout=60)
        x, rate = sf.read(wav, dtype="float64")
    x = soxr.resample(x, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else x
    hop = SAMPLE_RATE // 200
    frames = np.abs(x[: len(x) // hop * hop]).reshape(-1, hop).max(axis=1)
    loud = np.flatnonzero(frames > frames.max() * 0.01)
    x = x[max(0, (loud[0] - 2) * hop):(loud[-1] + 3) * hop]
    limit = int(0.95 * SAMPLE_RATE)
    return soxr.resample(x, len(x), limit)[:limit] if len(x) > limit else x


def place(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 1-s clip: the word at a random place, noise at 10-20 dB half the time, a random level: int16 [16000]."""
    speech = speech / np.abs(speech).max()
    window = np.zeros(SAMPLE_RATE)
    offset = int(rng.integers(0, SAMPLE_RATE - len(speech) + 1))
    window[offset:offset + len(speech)] = speech
    if rng.random() < 0.5:
        kind = ("white", "pink", "brown", "hum")[rng.integers(4)]
        window += noise(kind, SAMPLE_RATE, rng) * np.sqrt(np.mean(speech ** 2) / 10 ** (rng.uniform(10, 20) / 10))
    window *= 10 ** (rng.uniform(-20, -2) / 20) / np.abs(window).max()
    return np.round(window * 32767).astype(np.int16)


def held_out_noise(name: str, n: int, rng: np.random.Generator, speech: list[np.ndarray]) -> np.ndarray:
    """Noise recordings the generator does not make: float64 [n], peak 1."""
    t = np.arange(n) / SAMPLE_RATE
    if name == "traffic":  # low rumble swelling as cars pass
        x = noise("brown", n, rng) * (1 + 0.8 * np.sin(2 * np.pi * t / rng.uniform(3, 8)) ** 2)
    elif name == "fan":  # blade-rate tone and its harmonics over band noise
        f0 = rng.uniform(20, 60)
        x = signal.sosfilt(signal.butter(2, [100, 2000], "bandpass", fs=SAMPLE_RATE, output="sos"), rng.standard_normal(n))
        x += sum(0.5 / h * np.sin(2 * np.pi * h * f0 * t) for h in range(1, 8)) * x.std() * 4
    elif name == "rain":  # hiss with many short drops
        x = noise("pink", n, rng) * 0.5
        for at in rng.integers(0, n - 200, size=n // 400):
            x[at:at + 200] += rng.standard_normal(200) * np.exp(-np.arange(200) / 30) * rng.uniform(0.5, 3)
    elif name == "typing":  # key clicks at typing rate over a quiet room
        x = 0.05 * noise("brown", n, rng)
        at = 0
        while at < n - 400:
            x[at:at + 400] += rng.standard_normal(400) * np.exp(-np.arange(400) / 60) * rng.uniform(0.5, 1.5)
            at += int(rng.integers(SAMPLE_RATE // 12, SAMPLE_RATE // 3))
    elif name == "cafe":  # other people talking, close by
        x = speech_babble(n, speech, rng, talkers=3) + 0.1 * noise("pink", n, rng)
    else:
        raise ValueError(f"unknown noise {name!r}")
    return x / np.abs(x).max()


def make_flite_set(out: str | Path, seed: int = 0, variants: int = 6, other_variants: int = 2, noise_seconds: float = 20.0) -> dict:
    """Write the held-out set (see the module docstring). Returns {root, files: {kind: count}}.

    variants: (pitch, tempo) settings per voice for each command (5 voices x 6 = 30 clips per command);
    other_variants: the same for each of the OTHER_WORDS.
    """
    flite = find_flite()
    out = Path(out)
    assert not set(OTHER_WORDS) & set(AUX_WORDS + COMMAND_WORDS)
    rng = np.random.default_rng([seed, 0xF117E])
    counts = {"keywords": 0, "other_words": 0, "noise_seconds": 0}
    speech_for_cafe = []
    for words, per_voice, kind in ((COMMAND_WORDS, variants, "keywords"), (OTHER_WORDS, other_variants, "other_words")):
        for word in words:
            for voice in VOICES:
                for k in range(per_voice):
                    pitch, stretch = rng.uniform(70, 220), rng.uniform(0.8, 1.3)
                    speech = flite_word(flite, word, voice, pitch, stretch)
                    if kind == "other_words" and len(speech_for_cafe) < 40:
                        speech_for_cafe.append(speech)
                    atomic_write_bytes(out / word / f"{voice}-{k}_nohash_0.wav", wav_bytes(place(speech, rng)))
                    counts[kind] += 1
    for name in NOISES:
        x = held_out_noise(name, round(noise_seconds * SAMPLE_RATE), rng, speech_for_cafe)
        atomic_write_bytes(out / BACKGROUND_NOISE / f"{name}.wav", wav_bytes(np.round(x * 0.5 * 32767).astype(np.int16)))
        counts["noise_seconds"] += noise_seconds
    return {"root": str(out), "files": counts}
