"""Noise for the spoken-commands dataset: what is mixed under each utterance, and the long
recordings of `_background_noise_/` that a keyword spotter learns `_silence_` from.

    noise(kind, n, rng)                       unit-RMS noise float64 [n]: white, pink, brown, hum, babble
    background_recording(name, seconds, rng,  one long recording float64 [seconds x 16000], peak 1:
                         speech)              the NOISE_KINDS plus babble made of real (espeak-ng) words,
                                              a room tone with knocks and clicks, and a running tap

The background recordings copy what Speech Commands ships in `_background_noise_/` (white and pink
noise, a running tap, an exercise bike, dishes: about a minute each): noise with no word in it.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown", "hum", "babble")

# name of the file in _background_noise_/ -> how it is made (background_recording)
BACKGROUND_RECORDINGS = ("white_noise", "pink_noise", "brown_noise", "mains_hum", "speech_babble", "room_tone", "running_tap")


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Background noise of unit RMS: float64 [n]."""
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("white", "pink", "brown"):
        x = rng.standard_normal(n)
        if kind != "white":  # shape the spectrum: power ~ 1/f (pink) or 1/f^2 (brown)
            alpha = 1.0 if kind == "pink" else 2.0
            f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
            x = np.fft.irfft(np.fft.rfft(x) * f ** (-alpha / 2), n)
    elif kind == "hum":  # mains hum and its harmonics, with a little hiss
        f0 = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi))
                for h in range(1, 7))
        x = x + 0.05 * rng.standard_normal(n)
    elif kind == "babble":  # speech-band noise with syllable-rate loudness changes, like distant talkers
        sos = signal.butter(2, [150, 4000], btype="bandpass", fs=SAMPLE_RATE, output="sos")
        x = signal.sosfilt(sos, rng.standard_normal(n))
        talkers = rng.integers(3, 7)
        envelope = sum(1 + np.sin(2 * np.pi * rng.uniform(2, 7) * t + rng.uniform(0, 2 * np.pi))
                       for _ in range(talkers))
        x = x * envelope
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    return x / np.sqrt(np.mean(x ** 2))


def speech_babble(n: int, speech: list[np.ndarray], rng: np.random.Generator, talkers: int = 4) -> np.ndarray:
    """Several talkers at once, each saying words one after another: float64 [n].

    speech: single words float [<= 1 s at 16 kHz] (words that are not keywords: babble must not hold a command).
    """
    out = np.zeros(n)
    for _ in range(talkers):
        voice = np.zeros(n)
        at = int(rng.integers(0, SAMPLE_RATE // 2))
        while at < n:
            word = speech[rng.integers(len(speech))] * rng.uniform(0.3, 1.0)
            part = word[: n - at]
            voice[at:at + len(part)] += part
            at += len(word) + int(rng.integers(SAMPLE_RATE // 20, SAMPLE_RATE // 3))
        out += voice * rng.uniform(0.4, 1.0)
    # far away: the room's low-pass and a little reverberant smear
    out = signal.sosfilt(signal.butter(2, 3000, "lowpass", fs=SAMPLE_RATE, output="sos"), out)
    return out


def room_tone(n: int, rng: np.random.Generator) -> np.ndarray:
    """A quiet room: ventilation rumble and hum, now and then a knock, a click or a tap: float64 [n]."""
    t = np.arange(n) / SAMPLE_RATE
    x = noise("brown", n, rng) + 0.3 * noise("pink", n, rng)
    x += sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(90, 400) * t) for _ in range(2))
    for at in rng.integers(0, n - SAMPLE_RATE // 10, size=max(1, n // (2 * SAMPLE_RATE))):
        length = int(rng.integers(80, SAMPLE_RATE // 15))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / rng.uniform(3, 8)))
        if rng.random() < 0.5:  # a knock: low and dull
            burst = signal.sosfilt(signal.butter(2, rng.uniform(200, 800), "lowpass", fs=SAMPLE_RATE, output="sos"), burst)
        x[at:at + length] += burst * rng.uniform(2, 8)
    return x


def running_tap(n: int, rng: np.random.Generator) -> np.ndarray:
    """Water from a tap: band-limited noise whose loudness flickers quickly: float64 [n]."""
    t = np.arange(n) / SAMPLE_RATE
    sos = signal.butter(2, [400, 6000], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    x = signal.sosfilt(sos, rng.standard_normal(n))
    flicker = 1 + 0.5 * sum(np.sin(2 * np.pi * rng.uniform(8, 40) * t + rng.uniform(0, 2 * np.pi)) for _ in range(4)) / 4
    return x * flicker


def background_recording(name: str, seconds: float, rng: np.random.Generator, speech: list[np.ndarray]) -> np.ndarray:
    """One `_background_noise_/<name>.wav`: float64 [seconds x 16000] with peak 1. speech: words for the babble."""
    n = round(seconds * SAMPLE_RATE)
    simple = {"white_noise": "white", "pink_noise": "pink", "brown_noise": "brown", "mains_hum": "hum"}
    if name in simple:
        x = noise(simple[name], n, rng)
    elif name == "speech_babble":
        x = speech_babble(n, speech, rng)
    elif name == "room_tone":
        x = room_tone(n, rng)
    elif name == "running_tap":
        x = running_tap(n, rng)
    else:
        raise ValueError(f"unknown background recording {name!r}")
    return x / np.abs(x).max()
