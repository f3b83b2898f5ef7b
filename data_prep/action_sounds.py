"""The action sounds, and the clip's sound track they are mixed into.

Every action has a sound function that places its sounds at the motion's cue times
(see action_motion.Motion), so what is heard lines up with what is seen:

```
Motion.cues, n, sr, rng --walk_sound, clap_sound, ...--> sound: float [n] mono, any scale
    n samples at sr Hz: the whole clip; rng is the clip's sound generator

Motion, sound function, ClipSettings, rng, noise_rng --render_audio--> audio: float32 [C, N] in [-1, 1]
    N = T / fps * sample_rate, C = 1 or 2 (ClipSettings): the action's sound peak-normalised to
    ClipSettings.gain and panned by its balance, plus low-passed background noise and mains hum per channel
```

Sounds are built from a few synthesised parts: `burst` (band-passed noise with an
instant attack and exponential decay: taps, claps, footfalls), `tone` (a decaying,
gliding sine: thuds, booms, wood modes), combined with `mix` and `place`.
Filters work in the frequency domain (zero phase) with numpy alone: importing
scipy.signal costs seconds in every fresh worker process, more than a clip takes to make.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from data_prep.action_motion import Motion
from data_prep.action_settings import ClipSettings

# ---------------------------------------------------------------------------
# Building blocks: filters and sound parts.
# ---------------------------------------------------------------------------


def _shaped(x: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """x: float [N] filtered by the magnitude response gain(f) (f: float [N//2+1] Hz)."""
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return np.fft.irfft(np.fft.rfft(x) * gain(f), len(x))


def _lowpass_gain(f, hi):
    return 1 / np.sqrt(1 + (f / hi) ** 4)  # 2nd-order Butterworth magnitude


def _band(x: np.ndarray, lo: float, hi: float, sr: int) -> np.ndarray:
    """Band-pass lo..hi Hz (2nd-order slopes each side; hi kept below Nyquist)."""
    hi = min(hi, 0.45 * sr)
    return _shaped(x, sr, lambda f: _lowpass_gain(f, hi) * (1 - _lowpass_gain(f, lo) ** 2) ** 0.5)


def burst(rng, sr: int, lo: float, hi: float, decay: float) -> np.ndarray:
    """Band-passed noise with an instant attack and exponential decay (decay in seconds)."""
    n = int(sr * decay * 6)
    return _band(rng.standard_normal(n), lo, hi, sr) * np.exp(-np.arange(n) / (sr * decay))


def tone(sr: int, f0: float, f1: float, decay: float) -> np.ndarray:
    """A decaying sine gliding from f0 to f1 Hz."""
    n = int(sr * decay * 6)
    freq = np.geomspace(f0, f1, n)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-np.arange(n) / (sr * decay))


def mix(*parts: np.ndarray) -> np.ndarray:
    """Sum sounds of different lengths (zero-padded to the longest)."""
    out = np.zeros(max(len(p) for p in parts))
    for p in parts:
        out[: len(p)] += p
    return out


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / (np.abs(x).max() + 1e-9)


def place(track: np.ndarray, sound: np.ndarray, at: float, sr: int, gain: float = 1.0) -> None:
    """Add `sound` into `track` starting at time `at` (seconds), cut at the track's end."""
    i = round(at * sr)
    if 0 <= i < len(track):
        n = min(len(sound), len(track) - i)
        track[i : i + n] += gain * sound[:n]


def _hits(cues_times, n, sr, rng, make) -> np.ndarray:
    """One `make(rng)` sound per cue time, with a little level and timing spread (< 4 ms)."""
    track = np.zeros(n)
    for at in cues_times:
        place(track, _normalised(make(rng)), at + rng.uniform(-0.004, 0.004), sr, rng.uniform(0.7, 1.0))
    return track


# ---------------------------------------------------------------------------
# One sound per action: (cues, n_samples, sample_rate, rng) -> float [N] mono, any scale.
# ---------------------------------------------------------------------------


def walk_sound(cues, n, sr, rng) -> np.ndarray:
    """Soft, low heel thumps at the walking tempo."""
    return _hits(cues["steps"], n, sr, rng, lambda r: mix(burst(r, sr, 80, 700, 0.045), 0.8 * tone(sr, 95, 60, 0.04)))


def run_sound(cues, n, sr, rng) -> np.ndarray:
    """Quick, crunchy, brighter footfalls at the running tempo."""

    def step(r):
        return mix(burst(r, sr, 700, 4000, 0.025), 0.5 * burst(r, sr, 100, 500, 0.02))

    return _hits(cues["steps"], n, sr, rng, step)


def jump_sound(cues, n, sr, rng) -> np.ndarray:
    """A faint scuff at take-off and a heavy, booming thud at landing."""
    track = 0.25 * _hits(cues["takeoffs"], n, sr, rng, lambda r: burst(r, sr, 400, 2500, 0.05))

    def landing(r):
        return mix(tone(sr, 110, 40, 0.12), 0.7 * burst(r, sr, 40, 400, 0.08))

    return track + _hits(cues["landings"], n, sr, rng, landing)


def kick_sound(cues, n, sr, rng) -> np.ndarray:
    """An air whoosh during the leg swing and a punchy thwack at its top."""
    track = np.zeros(n)
    for begin, end in cues["swings"]:
        length = int((end - begin + 0.05) * sr)
        whoosh = _band(rng.standard_normal(length), 600, 2500, sr) * np.hanning(length)
        place(track, 0.4 * _normalised(whoosh), begin, sr)

    def thwack(r):
        return mix(tone(sr, 180, 120, 0.05), 0.6 * burst(r, sr, 2000, 6000, 0.01))

    return track + _hits(cues["impacts"], n, sr, rng, thwack)


def wave_sound(cues, n, sr, rng) -> np.ndarray:
    """A soft high swish whose loudness follows the waving hand's speed."""
    frame_times, speed = cues["swish"]
    envelope = np.interp(np.arange(n) / sr, frame_times, speed) ** 1.5
    return _band(rng.standard_normal(n), 2500, 7000, sr) * envelope


def clap_sound(cues, n, sr, rng) -> np.ndarray:
    """Bright, very short noise bursts (with a couple of micro-reflections) when the hands meet."""

    def clap(r):
        x = burst(r, sr, 1000, 6000, r.uniform(0.01, 0.018))
        for _ in range(2):  # palms touch in a few places within a few ms
            place(x, burst(r, sr, 1500, 6000, 0.006), r.uniform(0.002, 0.006), sr, r.uniform(0.3, 0.6))
        return x

    return _hits(cues["hits"], n, sr, rng, clap)


def knock_sound(cues, n, sr, rng) -> np.ndarray:
    """Low woody thuds (a few damped modes of a wooden board) when the hands meet."""
    f0 = rng.uniform(170, 260)  # one board per clip

    def knock(r):
        x = mix(*(a * tone(sr, f0 * m, f0 * m, d) for m, a, d in ((1, 1.0, 0.05), (2.3, 0.5, 0.03), (3.9, 0.25, 0.02))))
        place(x, burst(r, sr, 100, 1200, 0.004), 0.0, sr, 0.3)  # the knuckle's contact click
        return x

    return _hits(cues["hits"], n, sr, rng, knock)


def creak_sound(cues, n, sr, rng) -> np.ndarray:
    """A chair creaking while weight moves onto/off it: stick-slip pulses ringing the wood's resonances.

    Shared by SitDown and StandUp; it sees only the transition interval, whose
    distribution is the same for both classes.
    """
    t0, t1 = cues["transition"]
    times = np.arange(n) / sr
    # Stick-slip pulse rate wanders slowly; each pulse is one "tick" of the creak.
    wobble = np.interp(times, np.linspace(t0, t1, 6), rng.uniform(-1, 1, 6))
    rate = rng.uniform(30, 70) * (1 + 0.4 * wobble)
    ticks = np.diff(np.floor(np.cumsum(rate / sr)), prepend=0.0) * rng.uniform(0.5, 1.0, n)
    inside = np.clip(np.minimum(times - t0, t1 - times) / 0.1, 0, 1)  # 0.1-s fades at both ends
    pressure = np.interp(times, np.linspace(t0, t1, 4), rng.uniform(0.4, 1.0, 4))
    ticks *= inside * pressure
    f1 = rng.uniform(600, 1100)

    def wood(f):  # two resonances of the chair's wood
        f = np.maximum(f, 1.0)
        return sum(a / np.sqrt(1 + q**2 * (f / f0 - f0 / f) ** 2) for f0, q, a in ((f1, 12, 1.0), (f1 * 2.7, 15, 0.5)))

    return _shaped(ticks, sr, wood)


# ---------------------------------------------------------------------------
# The clip's sound track: the action's sound as a microphone in the room records it.
# ---------------------------------------------------------------------------


def render_audio(
    motion: Motion, sound: Callable, clip: ClipSettings, rng: np.random.Generator, noise_rng: np.random.Generator
) -> np.ndarray:
    """The clip's sound track: float32 [C, N] in [-1, 1], N = duration * sample rate."""
    sr = clip.sample_rate
    n = round(clip.seconds * sr)
    action = _normalised(sound(motion.cues, n, sr, rng)) * clip.gain
    times = np.arange(n) / sr
    channels = []
    for c in range(clip.channels):
        side = 1 - clip.balance if c == 0 else clip.balance
        pan = side / max(clip.balance, 1 - clip.balance)  # the louder side at full level
        noise = _shaped(noise_rng.standard_normal(n), sr, lambda f: _lowpass_gain(f, clip.noise_cutoff))
        noise *= clip.noise_level / (noise.std() + 1e-9)
        hum = clip.hum * np.sin(2 * np.pi * 50 * times)
        channels.append(pan * action + noise + hum)
    return np.clip(np.stack(channels), -1, 1).astype(np.float32)
