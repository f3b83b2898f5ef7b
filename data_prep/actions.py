"""The embedded action-clip dataset: a stick figure acting out 9 actions, with sound.

`make_actions(out)` writes a small dataset laid out like UCF101, so every stage of
the pipeline can run on a machine with no dataset and no internet:

```
out/classInd.txt                      "1 Walk" ... (1-based, in ACTION_CLASSES order)
out/trainlist01.txt                   "Walk/v_Walk_g02_c01.mp4 1"
out/testlist01.txt                    "Walk/v_Walk_g01_c01.mp4"
out/Walk/v_Walk_g01_c01.mp4           H.264 (libx264, yuv420p) + AAC, 1.5-4 s
...
```

Each clip is drawn frame by frame with OpenCV (an articulated stick figure: head,
torso, upper/lower arms and legs whose joint angles follow the action) and gets
a sound track synthesised with numpy, time-aligned with the motion (a clap sounds
when the hands meet, a footstep when a heel lands).

The classes are built so that *both* modalities are needed:

* **look-alike pair** `Clap` / `Knock`: the very same motion function (hands meeting
  in front of the chest at a random rhythm); only the sound differs (bright noise
  bursts vs low woody thuds). A video-only model cannot tell them apart.
* **sound-alike pair** `SitDown` / `StandUp`: the very same creak sound function fed
  with a transition interval of the same distribution; the motion of StandUp is
  the time reverse of SitDown. An audio-only model cannot tell them apart.
* all other classes differ in both motion and sound, so audio-visual fusion can
  reach ~100%.

A group `gNN` is one "actor" (figure size, colours, line thickness) in front of one
background, shared by every class, like UCF101's groups. Whole groups go to the
test split (the first ~25%, at least one) so no actor is in both splits.

Every clip is drawn from its own random generator seeded by
(seed, class, group, clip), so the output does not depend on the order of
generation or on the number of worker processes, and the same seed gives the same
decoded frames (libx264 runs single-threaded, which makes it deterministic).

Usage:

```python
from data_prep.actions import make_actions
summary = make_actions("data/actions", clips_per_class=8, seed=0)
print(summary["clips"], summary["seconds"])
```
"""

from __future__ import annotations

import json
import math
import multiprocessing
import numbers
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.progress import progress_bar

ACTION_CLASSES = ["Walk", "Run", "Jump", "Kick", "Wave", "Clap", "Knock", "SitDown", "StandUp"]
LOOK_ALIKE = ("Clap", "Knock")  # same motion distribution, different sound
SOUND_ALIKE = ("SitDown", "StandUp")  # same sound distribution, time-reversed motion

# Per-clip recording settings, drawn uniformly from these choices.
FPS_CHOICES = (15, 20, 24, 25, 30)
SIZE_CHOICES = ((160, 120), (240, 180), (320, 240))  # (width, height), even for yuv420p
SAMPLE_RATES = (16000, 22050, 44100)
DURATION_RANGE = (1.5, 4.0)  # seconds

# Bump when drawing or sound synthesis changes: clips written by another version are not reused.
GENERATOR_VERSION = 1
_STATE_FILE = ".make_actions.json"


# ---------------------------------------------------------------------------
# Random draws: one generator per purpose, so two classes that must share a
# distribution consume identical draws for it whatever else they do.
# ---------------------------------------------------------------------------


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _name_key(name: str) -> int:
    """A stable integer for a class name (Python's hash() changes between runs)."""
    return zlib.crc32(name.encode())


_GROUP_KEY = _name_key("group")


def _luma(bgr) -> float:
    b, g, r = bgr
    return 0.114 * b + 0.587 * g + 0.299 * r


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


@dataclass(frozen=True)
class Actor:
    """How one group's figure looks; shared by that group's clips in every class."""

    size: float  # figure height as a fraction of the ground line's height in the frame
    thickness: float  # limb thickness as a fraction of the figure height
    shirt: tuple  # BGR colours
    trousers: tuple
    arms: tuple
    skin: tuple


@dataclass(frozen=True)
class Scene:
    """One group's background, drawn procedurally so it scales to any frame size."""

    style: str  # solid | vgradient | hgradient | rects | texture
    wall: tuple
    wall2: tuple
    floor: tuple
    ground: float  # ground line as a fraction of the frame height
    texture_seed: int


def draw_group(seed: int, group: int) -> tuple[Actor, Scene]:
    """The actor and background of group `group`; the figure always contrasts with the wall."""
    rng = _rng(seed, _GROUP_KEY, group)
    wall = _colour(rng, 30, 230)
    scene = Scene(
        style=str(rng.choice(["solid", "vgradient", "hgradient", "rects", "texture"])),
        wall=wall,
        wall2=_colour(rng, 30, 230),
        floor=_colour(rng, 20, 200),
        ground=float(rng.uniform(0.8, 0.92)),
        texture_seed=int(rng.integers(2**31)),
    )

    def contrasting() -> tuple:
        # Rejection sampling (deterministic: same rng) until the colour stands out from the wall.
        while True:
            colour = _colour(rng)
            if abs(_luma(colour) - _luma(wall)) > 70:
                return colour

    shirt = contrasting()
    actor = Actor(
        size=float(rng.uniform(0.5, 0.68)),
        thickness=float(rng.uniform(0.03, 0.055)),
        shirt=shirt,
        trousers=contrasting(),
        arms=shirt if rng.random() < 0.5 else contrasting(),
        skin=contrasting(),
    )
    return actor, scene


@dataclass(frozen=True)
class ClipSettings:
    """Everything about one clip that is not the action itself. Drawn the same way for every class."""

    width: int
    height: int
    fps: int
    n_frames: int
    sample_rate: int
    channels: int
    facing: int  # +1 faces/moves right, -1 left
    place: float  # 0..1: where in the free horizontal room the figure stands
    pan: float  # 0..1: how much the camera follows a moving figure
    sway: tuple  # (amplitude rad, frequency Hz, phase): idle body sway
    jitter: float  # camera shake, pixels (std)
    pixel_noise: float  # sensor noise, grey levels (std)
    chair: tuple  # BGR colour of the chair (used only by the sit/stand classes)
    gain: float  # peak level of the action's sound
    noise_level: float  # background audio noise level (std)
    noise_cutoff: float  # background noise low-pass cutoff, Hz
    hum: float  # mains hum level
    balance: float  # stereo balance of the action sound, 0 left .. 1 right

    @property
    def seconds(self) -> float:
        return self.n_frames / self.fps


def draw_settings(rng: np.random.Generator) -> ClipSettings:
    fps = int(rng.choice(FPS_CHOICES))
    width, height = SIZE_CHOICES[rng.integers(len(SIZE_CHOICES))]
    lo, hi = DURATION_RANGE
    n_frames = int(np.clip(round(rng.uniform(lo, hi) * fps), math.ceil(lo * fps), math.floor(hi * fps)))
    return ClipSettings(
        width=width,
        height=height,
        fps=fps,
        n_frames=n_frames,
        sample_rate=int(rng.choice(SAMPLE_RATES)),
        channels=int(rng.integers(1, 3)),
        facing=int(rng.choice([-1, 1])),
        place=float(rng.random()),
        pan=float(rng.random()),
        sway=(float(rng.uniform(0, 0.04)), float(rng.uniform(0.2, 0.6)), float(rng.uniform(0, 2 * np.pi))),
        jitter=float(rng.uniform(0, 1.5)),
        pixel_noise=float(rng.uniform(0, 5)),
        chair=_colour(rng, 20, 200),
        gain=float(rng.uniform(0.3, 0.8)),
        noise_level=float(10 ** rng.uniform(-3, -1.6)),
        noise_cutoff=float(rng.uniform(1000, 6000)),
        hum=float(rng.uniform(0, 0.01) if rng.random() < 0.3 else 0.0),
        balance=float(rng.uniform(0.2, 0.8)),
    )


# ---------------------------------------------------------------------------
# The figure: joint angles over time (Pose) and forward kinematics.
# Lengths are in figure heights; angles in radians measured from straight down,
# positive towards the facing direction. Pairs are (near, far) limbs.
# ---------------------------------------------------------------------------

SHIN, THIGH, TORSO, NECK, HEAD_R = 0.24, 0.24, 0.30, 0.04, 0.075
UPPER_ARM, FOREARM, FOOT, SHOULDER_DROP = 0.16, 0.15, 0.06, 0.03


@dataclass
class Pose:
    """The figure's pose over T frames.

    x: float [T]            hip travel along the facing direction (figure heights)
    lift: float [T]         height of the lowest foot above the ground (jumps)
    lean: float [T]         torso tilt forward
    shoulder: float [T, 2]  upper-arm angle relative to the torso (near, far)
    elbow: float [T, 2]     forearm bend forward/up relative to the upper arm
    hip: float [T, 2]       thigh angle (absolute)
    knee: float [T, 2]      shin bend backward relative to the thigh
    """

    x: np.ndarray
    lift: np.ndarray
    lean: np.ndarray
    shoulder: np.ndarray
    elbow: np.ndarray
    hip: np.ndarray
    knee: np.ndarray

    def reversed(self) -> Pose:
        """The same movement played backwards."""
        return Pose(**{name: value[::-1].copy() for name, value in vars(self).items()})


# Key poses for keyframe animation: scalars for single channels, (near, far) for limbs.
STAND = {
    "lift": 0.0,
    "lean": 0.03,
    "shoulder": (0.1, -0.05),
    "elbow": (0.15, 0.2),
    "hip": (0.0, 0.0),
    "knee": (0.0, 0.0),
}


def key(**changes) -> dict:
    """A key pose: standing, except for the given channels."""
    return {**STAND, **changes}


def ease(t: np.ndarray, times, values) -> np.ndarray:
    """Cosine-eased interpolation through keyframes (held before the first and after the last).

    t: float [T] seconds; times: [K] increasing; values: [K] or [K, 2] -> float [T] or [T, 2].
    """
    times, values = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    u = np.clip((t - times[i]) / np.maximum(times[i + 1] - times[i], 1e-9), 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * u)  # zero velocity at each key: smooth, human-ish
    a, b = values[i], values[i + 1]
    return a + (b - a) * (w[:, None] if values.ndim == 2 else w)


def animate(t: np.ndarray, times: list[float], keys: list[dict]) -> Pose:
    """A Pose easing through key poses (dicts like STAND) at `times`."""
    return Pose(x=np.zeros_like(t), **{name: ease(t, times, [k[name] for k in keys]) for name in STAND})


def _limb(angle: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 2] (forward, up) for angles measured from straight down."""
    return np.stack([np.sin(angle), -np.cos(angle)], axis=-1)


def forward_kinematics(pose: Pose) -> dict[str, np.ndarray]:
    """Joint positions (forward, up) in figure heights, the lowest foot on the ground + lift.

    Returns name -> float [T, 2] for hip, neck, head, shoulder, and float [T, 2, 2]
    (near/far) for elbow, hand, knee, ankle, toe.
    """
    T = len(pose.lean)
    hip = np.zeros((T, 2))
    up = -_limb(pose.lean)  # torso axis, pointing up
    neck = hip + TORSO * up
    head = neck + (NECK + HEAD_R) * up
    shoulder = neck - SHOULDER_DROP * up
    upper_arm = pose.lean[:, None] + pose.shoulder  # arms hang from the torso, so they lean with it
    elbow = shoulder[:, None] + UPPER_ARM * _limb(upper_arm)
    hand = elbow + FOREARM * _limb(upper_arm + pose.elbow)
    knee = hip[:, None] + THIGH * _limb(pose.hip)
    shin = pose.hip - pose.knee
    ankle = knee + SHIN * _limb(shin)
    toe = ankle + FOOT * _limb(shin + np.pi / 2)
    joints = {"hip": hip, "neck": neck, "head": head, "shoulder": shoulder, "elbow": elbow, "hand": hand}
    joints |= {"knee": knee, "ankle": ankle, "toe": toe}

    # Stand on the ground: whichever foot is lowest touches it (stance leg in a gait,
    # both feet in a crouch), then add the jump's lift and the travel.
    lowest = np.minimum(ankle[..., 1], toe[..., 1]).min(axis=1)  # [T]
    offset = np.stack([pose.x, pose.lift - lowest], axis=-1)  # [T, 2]
    return {name: p + (offset if p.ndim == 2 else offset[:, None]) for name, p in joints.items()}


def leg_reach(hip: np.ndarray, knee: np.ndarray) -> np.ndarray:
    """How far forward of the hip the ankle is, figure heights."""
    return THIGH * np.sin(hip) + SHIN * np.sin(hip - knee)


# ---------------------------------------------------------------------------
# Motions: t: float [T] (frame times, seconds) and a generator -> Motion.
# `cues` carry the times of sound events, so the sound lines up with the motion.
# ---------------------------------------------------------------------------


@dataclass
class Motion:
    """What a motion function returns: the pose over time and the cue times for the sound."""

    pose: Pose
    cues: dict = field(default_factory=dict)
    chair: bool = False  # draw a chair under the lowest hip position


def _starts(rng: np.random.Generator, duration: float, length: float, max_count: int = 3) -> np.ndarray:
    """Start times of 1..max_count non-overlapping repeats (each `length` s) spread at random over the clip."""
    fit = max(1, min(max_count, int(duration // length)))
    count = int(rng.integers(1, fit + 1))
    slack = max(0.0, duration - count * length)
    return np.sort(rng.uniform(0, slack, count)) + length * np.arange(count)


def _gait(t, rng, stride_hz, swing, knee, arm, elbow, lean, bounce) -> Motion:
    """Walking and running: legs swing in antiphase, arms opposite to the legs, heel strikes are cues."""
    phase0 = rng.uniform(0, 2 * np.pi)  # start anywhere in the stride cycle
    phase = 2 * np.pi * stride_hz * t + phase0
    legs = np.stack([phase, phase + np.pi], axis=-1)  # [T, 2]
    pose = Pose(
        # Four strides of 2*leg*sin(swing) per cycle: the hips move as fast as the stance foot pushes back.
        x=4 * (THIGH + SHIN) * np.sin(swing) * stride_hz * t,
        lift=bounce * np.abs(np.cos(phase)),  # airborne mid-stride, down at each heel strike
        lean=lean + 0.02 * np.sin(2 * phase),
        shoulder=-arm * swing * np.sin(legs) + 0.05,
        elbow=elbow + 0.15 * np.sin(legs) ** 2,
        hip=swing * np.sin(legs),
        knee=0.1 + knee * np.clip(np.cos(legs), 0, None),  # the swinging leg folds
    )
    # A heel lands when its leg is furthest forward: phase = pi/2 (near), 3pi/2 (far).
    k = np.arange(-2, int(2 * stride_hz * t[-1]) + 3)
    steps = (np.pi / 2 + k * np.pi - phase0) / (2 * np.pi * stride_hz)
    return Motion(pose, {"steps": steps[(steps >= 0) & (steps <= t[-1])]})


def walk_motion(t, rng) -> Motion:
    stride_hz, swing = rng.uniform(0.8, 1.05), rng.uniform(0.3, 0.4)  # ~1.6-2.1 steps per second
    return _gait(t, rng, stride_hz, swing, knee=0.8, arm=0.7, elbow=0.25, lean=0.05, bounce=0.0)


def run_motion(t, rng) -> Motion:
    stride_hz, swing = rng.uniform(1.35, 1.65), rng.uniform(0.55, 0.65)  # ~2.7-3.3 steps per second
    return _gait(t, rng, stride_hz, swing, knee=1.7, arm=1.0, elbow=1.5, lean=0.25, bounce=0.05)


def jump_motion(t, rng) -> Motion:
    """Crouch, swing the arms up and jump (1-2 times); the landing is the cue."""
    flight, height = rng.uniform(0.4, 0.55), rng.uniform(0.18, 0.3)
    tempo = rng.uniform(0.85, 1.1)
    crouch, push, land, recover = 0.3 * tempo, 0.12 * tempo, 0.15 * tempo, 0.3 * tempo
    length = crouch + push + flight + land + recover
    CROUCH = key(lean=0.6, shoulder=(-0.7, -0.6), elbow=(0.3, 0.3), hip=(1.0, 1.0), knee=(1.9, 1.9))
    PUSH = key(lean=0.1, shoulder=(2.7, 2.6), elbow=(0.2, 0.2))
    TUCK = key(lean=0.1, shoulder=(1.4, 1.3), elbow=(0.3, 0.3), hip=(0.3, 0.3), knee=(0.6, 0.6))
    LAND = key(lean=0.45, shoulder=(0.7, 0.6), elbow=(0.3, 0.3), hip=(0.8, 0.8), knee=(1.5, 1.5))
    times, keys, takeoffs = [], [], []
    for start in _starts(rng, t[-1], length, max_count=2):
        off = start + crouch + push
        times += [start, start + crouch, off, off + flight, off + flight + land, start + length]
        keys += [STAND, CROUCH, PUSH, TUCK, LAND, STAND]
        takeoffs.append(off)
    pose = animate(t, times, keys)
    for off in takeoffs:  # ballistic flight: a parabola, not an eased curve
        u = (t - off) / flight
        pose.lift = np.where((u > 0) & (u < 1), 4 * height * u * (1 - u), pose.lift)
    takeoffs = np.array(takeoffs)
    return Motion(pose, {"takeoffs": takeoffs, "landings": takeoffs + flight})


def kick_motion(t, rng) -> Motion:
    """Wind one leg back, swing it up fast, recoil (1-3 times); whoosh during the swing, thud at its top."""
    leg = int(rng.integers(2))  # near or far leg kicks
    tempo = rng.uniform(0.85, 1.15)
    windup, strike, hold, recoil, settle = 0.3 * tempo, 0.13 * tempo, 0.08, 0.2 * tempo, 0.25 * tempo
    length = windup + strike + hold + recoil + settle

    def pair(kicking, standing):
        return (kicking, standing) if leg == 0 else (standing, kicking)

    WINDUP = key(lean=0.1, hip=pair(-0.45, 0.05), knee=pair(1.1, 0.1), shoulder=pair(0.5, -0.4))
    STRIKE = key(lean=-0.15, hip=pair(rng.uniform(1.2, 1.5), -0.05), knee=pair(0.15, 0.05), shoulder=pair(-0.6, 0.8))
    RECOIL = key(lean=0.0, hip=pair(0.6, 0.0), knee=pair(1.3, 0.05), shoulder=pair(-0.2, 0.3))
    times, keys, swings = [], [], []
    for start in _starts(rng, t[-1], length):
        hit = start + windup + strike
        times += [start, start + windup, hit, hit + hold, hit + hold + recoil, start + length]
        keys += [STAND, WINDUP, STRIKE, STRIKE, RECOIL, STAND]
        swings.append((start + windup, hit))
    swings = np.array(swings)
    return Motion(animate(t, times, keys), {"swings": swings, "impacts": swings[:, 1]})


def wave_motion(t, rng) -> Motion:
    """Raise one arm and wave the forearm over the head; the hand's speed drives a swish."""
    arm = int(rng.integers(2))
    rate, amplitude = rng.uniform(1.5, 2.5), rng.uniform(0.4, 0.6)
    raise_s = rng.uniform(0.25, 0.4)
    start = rng.uniform(0, 0.3 * t[-1])
    end = start + raise_s + rng.uniform(0.6, 1.0) * (t[-1] - start - 2 * raise_s)
    up = (2.75, 0.35)  # upper arm nearly vertical, forearm straight up
    RAISED = key(shoulder=tuple(up[0] if a == arm else STAND["shoulder"][a] for a in range(2)),
                 elbow=tuple(up[1] if a == arm else STAND["elbow"][a] for a in range(2)))
    times = [start, start + raise_s, end, end + raise_s]
    pose = animate(t, times, [STAND, RAISED, RAISED, STAND])
    raised = ease(t, times, [0, 1, 1, 0])  # waving only while the arm is up
    swing = amplitude * np.sin(2 * np.pi * rate * (t - start) + rng.uniform(0, 2 * np.pi)) * raised
    pose.elbow[:, arm] += swing
    hand_speed = np.abs(np.gradient(swing, t))
    return Motion(pose, {"swish": np.stack([t, hand_speed / (hand_speed.max() + 1e-9)])})


def hands_meet_motion(t, rng) -> Motion:
    """Raise both hands in front of the chest and bring them together at a steady rhythm.

    Shared by Clap and Knock: the look-alike pair gets exactly the same motion
    distribution, and the hands meet at the cue times where the sound is placed.
    """
    rate = rng.uniform(1.6, 2.8)  # meetings per second
    spread, reach, bend = rng.uniform(0.35, 0.55), rng.uniform(0.8, 1.0), rng.uniform(0.9, 1.2)
    raise_s = rng.uniform(0.25, 0.4)
    start = rng.uniform(0, 0.3 * t[-1])
    clap_from = start + raise_s
    most = max(1, int((t[-1] - clap_from) * rate))
    hits = clap_from + (np.arange(int(rng.integers(max(1, most // 2), most + 1))) + 0.5) / rate
    clap_to = clap_from + len(hits) / rate
    READY = key(lean=0.08, shoulder=(reach, reach), elbow=(bend, bend))  # hands together in front of the chest
    times = [start, clap_from, clap_to, clap_to + raise_s]
    pose = animate(t, times, [STAND, READY, READY, STAND])
    ready = ease(t, times, [0, 1, 1, 0])
    # Hands apart by `spread` when ready, meeting (|cos| = 0) half a period after each swing begins.
    inside = (t >= clap_from) & (t <= clap_to)
    apart = spread * ready * np.where(inside, np.abs(np.cos(np.pi * rate * (t - clap_from))), 1.0)
    pose.shoulder[:, 0] -= apart  # scissor: near arm down, far arm up, meeting in the middle
    pose.shoulder[:, 1] += apart
    return Motion(pose, {"hits": hits})


def sit_down_motion(t, rng) -> Motion:
    """Lower onto a chair: stand, lean forward with the hips going back, sit upright.

    The transition interval is centred on the clip at random and so has the same
    distribution as its time reverse: StandUp (the reverse) gets an identically
    distributed creak cue.
    """
    duration = min(rng.uniform(0.8, 1.3), 0.7 * t[-1])  # so the whole transition is inside the clip
    middle = t[-1] / 2 + rng.uniform(-0.15, 0.15) * t[-1]
    t0, t1 = middle - duration / 2, middle + duration / 2
    arm = rng.uniform(0.7, 1.0)
    HALFWAY = key(lean=0.7, shoulder=(arm, arm - 0.1), elbow=(0.4, 0.4), hip=(1.0, 1.0), knee=(1.3, 1.3))
    SEATED = key(lean=0.12, shoulder=(0.35, 0.3), elbow=(0.9, 0.9), hip=(1.5, 1.5), knee=(1.5, 1.5))
    pose = animate(t, [t0, t0 + 0.55 * duration, t1], [STAND, HALFWAY, SEATED])
    # Feet stay put: the hips move back by as much as the ankles would move forward.
    reach = leg_reach(pose.hip[:, 0], pose.knee[:, 0])
    pose.x = -(reach - reach[0])
    return Motion(pose, {"transition": np.array([t0, t1])}, chair=True)


def stand_up_motion(t, rng) -> Motion:
    """SitDown played backwards (cue times mirrored too)."""
    sitting = sit_down_motion(t, rng)
    t0, t1 = sitting.cues["transition"]
    return Motion(sitting.pose.reversed(), {"transition": np.array([t[-1] - t1, t[-1] - t0])}, chair=True)


# ---------------------------------------------------------------------------
# Sounds: (cues, n_samples, sample_rate, rng) -> float [N] mono, any scale.
# ---------------------------------------------------------------------------


# Filters are applied in the frequency domain (zero phase) with numpy alone: importing
# scipy.signal costs seconds in every fresh worker process, more than a clip takes to make.


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


# Every class: which motion, which sound. The pairs share a function on purpose.
ACTIONS: dict[str, tuple[Callable, Callable]] = {
    "Walk": (walk_motion, walk_sound),
    "Run": (run_motion, run_sound),
    "Jump": (jump_motion, jump_sound),
    "Kick": (kick_motion, kick_sound),
    "Wave": (wave_motion, wave_sound),
    "Clap": (hands_meet_motion, clap_sound),
    "Knock": (hands_meet_motion, knock_sound),
    "SitDown": (sit_down_motion, creak_sound),
    "StandUp": (stand_up_motion, creak_sound),
}
assert list(ACTIONS) == ACTION_CLASSES


def dance_motion(t, rng) -> Motion:
    """Bob on the beat with the arms going up in turn; a clap on every beat (the unknown-class fault)."""
    beat = 1 / rng.uniform(1.5, 2.2)
    beats = np.arange(rng.uniform(0.1, 0.4), t[-1], beat)
    UP_NEAR = key(shoulder=(2.6, 0.4), elbow=(0.4, 0.6), hip=(0.35, 0.35), knee=(0.7, 0.7), lean=0.15)
    UP_FAR = key(shoulder=(0.4, 2.6), elbow=(0.6, 0.4), hip=(0.35, 0.35), knee=(0.7, 0.7), lean=0.15)
    BETWEEN = key(shoulder=(1.2, 1.2), elbow=(0.8, 0.8))
    times = np.sort(np.concatenate([beats, beats + beat / 2]))
    keys = [(UP_NEAR, BETWEEN, UP_FAR, BETWEEN)[i % 4] for i in range(len(times))]
    return Motion(animate(t, list(times), keys), {"hits": beats})


# A class folder that is not in classInd.txt (a fault): a valid clip of an action outside the class list.
UNKNOWN_CLASS = "Dance"
_ALL_ACTIONS = {**ACTIONS, UNKNOWN_CLASS: (dance_motion, clap_sound)}


# ---------------------------------------------------------------------------
# Rendering one clip: pictures, sound, and the MP4 file.
# ---------------------------------------------------------------------------

_MARGIN = 4  # background pixels kept around the frame for camera shake


def render_background(scene: Scene, width: int, height: int, frame_height: int) -> np.ndarray:
    """The group's backdrop: uint8 [height, width, 3] (BGR), patterns sized relative to `frame_height`."""
    rng = np.random.default_rng(scene.texture_seed)
    img = np.empty((height, width, 3), np.float32)
    img[:] = scene.wall
    rows = np.linspace(0, 1, height)[:, None, None]
    cols = np.arange(width)[None, :, None] / frame_height  # in frame heights: same look at any resolution
    if scene.style == "vgradient":
        img = img * (1 - rows) + np.array(scene.wall2) * rows
    elif scene.style == "hgradient":
        blend = 0.5 + 0.5 * np.cos(cols * rng.uniform(1.0, 2.5))
        img = img * (1 - blend) + np.array(scene.wall2) * blend
    elif scene.style == "rects":
        # A fixed list of rectangles over 12 frame heights of width, so a panning camera sees more of the same wall.
        for _ in range(60):
            x, y = rng.uniform(0, 12), rng.uniform(-0.1, 0.8)
            w, h = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.4)
            colour = tuple(float(c) for c in np.clip(np.array(scene.wall2) + rng.integers(-40, 40, 3), 0, 255))
            p0 = (int(x * frame_height), int(y * frame_height))
            p1 = (int((x + w) * frame_height), int((y + h) * frame_height))
            cv2.rectangle(img, p0, p1, colour, -1)
    elif scene.style == "texture":
        cells = rng.standard_normal((8, 96, 3)).astype(np.float32)  # 8 cells per frame height, 12 heights wide
        needed = max(2, math.ceil(width / frame_height * 8) + 1)
        blobs = cv2.resize(cells[:, :needed], (int(needed * frame_height / 8), height), interpolation=cv2.INTER_CUBIC)
        img += 15 * blobs[:, :width]
    ground = _MARGIN + int(scene.ground * frame_height)
    shade = np.linspace(1.0, 0.75, height - ground)[:, None, None]
    img[ground:] = np.array(scene.floor, np.float32) * shade
    cv2.line(img, (0, ground), (width, ground), tuple(0.6 * c for c in scene.floor), 1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pts(p: np.ndarray) -> tuple[int, int]:
    """A point for cv2's fixed-point drawing (shift=4: 1/16-pixel precision, smooth motion)."""
    return round(p[0] * 16), round(p[1] * 16)


def _line(img, a, b, colour, thickness):
    cv2.line(img, _pts(a), _pts(b), colour, thickness, cv2.LINE_AA, shift=4)


def _darker(colour, factor=0.65):
    return tuple(int(c * factor) for c in colour)


def draw_figure(img: np.ndarray, j: dict[str, np.ndarray], actor: Actor, facing: int, scale: float) -> None:
    """Draw one frame's figure; j: name -> float [2] or [2, 2] pixel positions. Far limbs first, darker."""
    thick = max(2, round(actor.thickness * scale))
    colours = {0: (actor.arms, actor.trousers), 1: (_darker(actor.arms), _darker(actor.trousers))}

    def leg(k):
        _line(img, j["hip"], j["knee"][k], colours[k][1], thick)
        _line(img, j["knee"][k], j["ankle"][k], colours[k][1], thick)
        _line(img, j["ankle"][k], j["toe"][k], _darker(colours[k][1], 0.5), thick)  # shoe shows the facing

    def arm(k):
        _line(img, j["shoulder"], j["elbow"][k], colours[k][0], thick)
        _line(img, j["elbow"][k], j["hand"][k], colours[k][0], thick)
        skin = actor.skin if k == 0 else _darker(actor.skin)
        cv2.circle(img, _pts(j["hand"][k]), int(thick * 0.7 * 16), skin, -1, cv2.LINE_AA, shift=4)

    leg(1)
    arm(1)
    _line(img, j["hip"], j["neck"], actor.shirt, int(thick * 1.6))
    leg(0)
    head_r = HEAD_R * scale
    cv2.circle(img, _pts(j["head"]), int(head_r * 16), actor.skin, -1, cv2.LINE_AA, shift=4)
    eye = j["head"] + np.array([facing * 0.45 * head_r, -0.2 * head_r])  # the eye shows where the figure looks
    cv2.circle(img, _pts(eye), int(max(1.0, 0.18 * head_r) * 16), _darker(actor.skin, 0.3), -1, cv2.LINE_AA, shift=4)
    arm(0)


def draw_chair(img: np.ndarray, seat: np.ndarray, floor: float, facing: int, scale: float, colour, thick: int) -> None:
    """A side-view chair whose seat is under the sitter's hip `seat` (pixels [2]), legs down to y = `floor`."""
    front = seat + np.array([facing * 0.12 * scale, 0.0])
    rear = seat + np.array([-facing * 0.14 * scale, 0.0])
    _line(img, front, rear, colour, thick)
    _line(img, front, np.array([front[0], floor]), colour, thick)
    _line(img, rear, np.array([rear[0], floor]), colour, thick)
    _line(img, rear, rear - np.array([0.0, 0.3 * scale]), colour, thick)


def render_frames(
    motion: Motion, actor: Actor, scene: Scene, clip: ClipSettings, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield the clip's frames: uint8 [H, W, 3] (BGR). `rng` draws camera shake and pixel noise."""
    W, H, T = clip.width, clip.height, clip.n_frames
    t = np.arange(T) / clip.fps
    amp, freq, phase = clip.sway
    pose = replace(motion.pose, lean=motion.pose.lean + amp * np.sin(2 * np.pi * freq * t + phase))
    joints = forward_kinematics(pose)

    # Figure units -> pixels: mirror for facing, y grows downwards, feet on the ground line.
    scale = actor.size * scene.ground * H  # figure height in pixels
    ground = _MARGIN + scene.ground * H  # in background coordinates

    def to_px(p):
        return np.stack([clip.facing * p[..., 0] * scale, ground - p[..., 1] * scale], axis=-1)

    px = {name: to_px(p) for name, p in joints.items()}  # world x still relative (placed below)

    # A travelling figure: the camera pans by a fraction of the travel, enough to keep it in frame.
    travel = px["hip"][:, 0] - px["hip"][0, 0]  # [T]
    span = np.ptp(travel)
    room = 0.6 * W
    # (follow = 1 - room/span is the least panning that keeps the on-screen path within `room`)
    follow = max(clip.pan, 1 - room / span) if span > room else clip.pan * 0.5
    camera = np.minimum(follow, 0.97) * travel
    camera -= camera.min()  # >= 0: offset into the (wider) background

    # Place the figure: its whole on-screen path within the frame margins, where `place` says.
    everything = np.concatenate([p.reshape(T, -1, 2) for p in px.values()], axis=1)  # [T, J, 2]
    on_screen = everything[..., 0] - camera[:, None]
    lo, hi = on_screen.min() - HEAD_R * scale, on_screen.max() + HEAD_R * scale
    margin = 0.05 * W
    left, right = margin - lo, W - margin - hi
    shift = left + clip.place * (right - left) if right >= left else (W - lo - hi) / 2
    shift += _MARGIN  # world x of screen x 0 is _MARGIN + camera
    for p in px.values():
        p[..., 0] += shift
    seat = None
    if motion.chair:
        seated = int(np.argmin(joints["hip"][:, 1]))
        seat = px["hip"][seated] + np.array([0.0, 0.04 * scale])

    background = render_background(scene, W + 2 * _MARGIN + math.ceil(camera.max()) + 1, H + 2 * _MARGIN, H)
    shake = np.clip(np.round(rng.normal(0, clip.jitter, (T, 2))), -_MARGIN, _MARGIN).astype(int)
    thick = max(2, round(actor.thickness * scale))
    # Sensor noise: one noise field per clip, cropped at a random offset per frame (much cheaper than
    # fresh Gaussian noise for every frame, and still different from frame to frame).
    field_pad = 32
    noise_field = rng.standard_normal((H + field_pad, W + field_pad, 3), dtype=np.float32) * clip.pixel_noise
    noise_at = rng.integers(0, field_pad, (T, 2))
    for i in range(T):
        x0 = _MARGIN + round(camera[i]) + shake[i, 0]
        y0 = _MARGIN + shake[i, 1]
        frame = background[y0 : y0 + H, x0 : x0 + W].copy()
        origin = np.array([x0, y0], float)
        if seat is not None:
            draw_chair(frame, seat - origin, ground - y0, clip.facing, scale, clip.chair, thick)
        draw_figure(frame, {name: p[i] - origin for name, p in px.items()}, actor, clip.facing, scale)
        if clip.pixel_noise > 0:
            dy, dx = noise_at[i]
            frame = np.clip(frame + noise_field[dy : dy + H, dx : dx + W], 0, 255).astype(np.uint8)
        yield frame


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


def write_mp4(
    path: Path,
    frames: Iterator[np.ndarray],
    fps: int,
    size: tuple[int, int],
    audio: np.ndarray | None,
    sample_rate: int,
) -> None:
    """Encode frames (uint8 [H, W, 3] BGR) as H.264/yuv420p and audio (float32 [C, N]) as AAC into an MP4."""
    width, height = size
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.thread_count = 1  # single-threaded x264 is bit-for-bit deterministic
        video.options = {"preset": "veryfast", "crf": "24"}
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            sound = container.add_stream("aac", rate=sample_rate, layout=layout)
            sound.options = {"aac_coder": "fast"}  # the default "twoloop" coder costs more than the video
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            # One big planar frame; PyAV re-chunks it into AAC's 1024-sample frames.
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sample_rate, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode())


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; rename it to `path` only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    with _atomic(path) as tmp:
        tmp.write_text(text)


@dataclass(frozen=True)
class ClipJob:
    """One file to write: root/rel_path, drawn from (seed, action, group, clip)."""

    root: str
    rel_path: str
    action: str
    group: int
    clip: int
    seed: int
    fault: str | None = None  # None | "truncated" | "no_audio" (unknown-class clips are just regular clips)


def clip_rngs(seed: int, action: str, group: int, clip: int) -> list[np.random.Generator]:
    """The clip's independent generators: [settings, motion, sound, noise]."""
    keys = np.random.SeedSequence([seed, _name_key(action), group, clip]).spawn(4)
    return [np.random.default_rng(k) for k in keys]


def clip_settings(seed: int, action: str, group: int, clip: int) -> ClipSettings:
    """The recording settings (size, fps, frames, sample rate, ...) clip (action, group, clip) gets."""
    return draw_settings(clip_rngs(seed, action, group, clip)[0])


def render_clip(job: ClipJob) -> str:
    """Render, encode and atomically write one clip; returns its relative path."""
    settings_rng, motion_rng, sound_rng, noise_rng = clip_rngs(job.seed, job.action, job.group, job.clip)
    clip = draw_settings(settings_rng)
    actor, scene = draw_group(job.seed, job.group)
    motion_fn, sound_fn = _ALL_ACTIONS[job.action]
    t = np.arange(clip.n_frames) / clip.fps
    motion = motion_fn(t, motion_rng)
    audio = render_audio(motion, sound_fn, clip, sound_rng, noise_rng)
    frames = render_frames(motion, actor, scene, clip, noise_rng)

    path = Path(job.root) / job.rel_path
    with _atomic(path) as tmp:
        if job.fault == "no_audio":
            audio = None
        write_mp4(tmp, frames, clip.fps, (clip.width, clip.height), audio, clip.sample_rate)
        if job.fault == "truncated":  # what an interrupted download leaves: the start of a valid file
            data = tmp.read_bytes()
            tmp.write_bytes(data[: int(len(data) * 0.4)])
    return job.rel_path


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


# ---------------------------------------------------------------------------
# The dataset: groups, splits, faults.
# ---------------------------------------------------------------------------


def group_sizes(clips_per_class: int) -> list[int]:
    """Clips in each group g01, g02, ...: about 2 per group (UCF101 has 25 groups of 4-7)."""
    n_groups = min(25, max(2, math.ceil(clips_per_class / 2)))
    base, extra = divmod(clips_per_class, n_groups)
    return [base + (g < extra) for g in range(n_groups)]


def clip_name(action: str, group: int, clip: int) -> str:
    return f"{action}/v_{action}_g{group:02d}_c{clip:02d}.mp4"


# Fault files: relative path -> (how it is made, listed in trainlist01?, reason).
FAULTS = {
    clip_name("Walk", 99, 1): ("empty", False, "empty file (0 bytes)"),
    clip_name("Run", 98, 1): ("truncated", True, "truncated MP4 (first 40% of the bytes): cannot be decoded"),
    clip_name("Jump", 98, 2): ("no_audio", True, "no audio track (H.264 video only)"),
    clip_name("Kick", 99, 1): ("text", False, "not a video: a text file with a .mp4 extension"),
    clip_name(UNKNOWN_CLASS, 1, 1): ("unknown", False, f"class folder '{UNKNOWN_CLASS}' is not in classInd.txt"),
}
_CLIP_FILE = re.compile(r"^v_.+_g\d+_c\d+\.mp4$|^\.v_.+\.tmp$")


def _prepare_root(root: Path, seed: int) -> bool:
    """Create/validate the output folder; True if the clips already there can be reused.

    A folder is ours if it holds _STATE_FILE; anything else that is not empty is refused
    rather than written into (it may be someone's real dataset).
    """
    state = root / _STATE_FILE
    if root.exists() and not root.is_dir():
        raise UserError(f"output folder {root} is an existing file; expected a folder (new or empty)")
    if root.is_dir() and any(root.iterdir()) and not state.exists():
        raise UserError(
            f"output folder {root} is not empty and was not made by make_actions; choose a new or empty folder"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {root}: {e.strerror}") from None
    wanted = {"generator": GENERATOR_VERSION, "seed": seed}
    try:
        reusable = json.loads(state.read_text()) == wanted
    except (OSError, ValueError):
        reusable = False
    if not reusable:
        # Clips of another seed/version go before the new state is recorded, so an interrupted
        # run can never leave old clips that a later run would take for its own.
        _remove_stale(root, keep=set())
        _write_text(state, json.dumps(wanted))
    _write_text(root / "classInd.txt", "".join(f"{i} {name}\n" for i, name in enumerate(ACTION_CLASSES, 1)))
    return reusable


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Delete clips (and leftover temp files) of ours that the new dataset does not have."""
    for folder in [*ACTION_CLASSES, UNKNOWN_CLASS]:
        if (root / folder).is_dir():
            for f in (root / folder).iterdir():
                if _CLIP_FILE.match(f.name) and f"{folder}/{f.name}" not in keep:
                    f.unlink()


def _integer(name: str, value, lo: int, hi: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise UserError(f"{name} must be an integer from {lo} to {hi}{' ' + why if why else ''}, got {value!r}")
    return int(value)


def make_actions(
    out: str | Path,
    clips_per_class: int = 8,
    seed: int = 0,
    with_faults: bool = False,
    progress: bool = True,
    workers: int = 2,
) -> dict:
    """Write the action dataset to `out` (UCF101 layout) and return a summary.

    Summary keys: root, classes, clips (regular clips written or reused), train and
    test (lines in trainlist01/testlist01), groups, test_groups, faults
    ({relative path: reason}, empty unless with_faults), written, reused, seconds.
    Clips already in `out` from an earlier run with the same seed are reused, so an
    interrupted run resumes.
    """
    start = time.perf_counter()
    clips_per_class = _integer("clips_per_class", clips_per_class, 2, 500, "(one test and one train group)")
    seed = _integer("seed", seed, 0, 2**63 - 1)
    workers = _integer("workers", workers, 1, 256)
    root = Path(out)
    reusable = _prepare_root(root, seed)
    for name in ("trainlist01.txt", "testlist01.txt"):  # rewritten at the end, once every clip exists
        (root / name).unlink(missing_ok=True)

    sizes = group_sizes(clips_per_class)
    n_test = max(1, round(0.25 * len(sizes)))
    test_groups = list(range(1, n_test + 1))
    jobs = [
        ClipJob(str(root), clip_name(action, g, c), action, g, c, seed)
        for action in ACTION_CLASSES
        for g, size in enumerate(sizes, 1)
        for c in range(1, size + 1)
    ]
    faults = {}
    if with_faults:
        for rel, (kind, _, reason) in FAULTS.items():
            faults[rel] = reason
            action, g, c = re.match(r"^(\w+)/v_\w+_g(\d+)_c(\d+)\.mp4$", rel).groups()
            if kind in ("truncated", "no_audio", "unknown"):
                jobs.append(ClipJob(str(root), rel, action, int(g), int(c), seed, None if kind == "unknown" else kind))

    keep = {job.rel_path for job in jobs} | set(faults)
    _remove_stale(root, keep)
    for folder in {rel.split("/")[0] for rel in keep}:
        (root / folder).mkdir(exist_ok=True)
    if with_faults:
        for rel, (kind, _, _) in FAULTS.items():
            if kind == "empty":
                _write_text(root / rel, "")
            elif kind == "text":
                _write_text(root / rel, "This is not a video. It was saved with the wrong extension.\n")

    todo = [job for job in jobs if not (reusable and (root / job.rel_path).exists())]
    _run_jobs(todo, workers, progress)

    # Split files last: they only ever list clips that exist. UCF101 order: class, group, clip.
    label = {name: i for i, name in enumerate(ACTION_CLASSES, 1)}
    listed = [job for job in jobs if job.action in label and (job.fault is None or FAULTS[job.rel_path][1])]
    listed.sort(key=lambda job: (label[job.action], job.group, job.clip))
    train = [f"{job.rel_path} {label[job.action]}\n" for job in listed if job.group not in test_groups]
    test = [f"{job.rel_path}\n" for job in listed if job.group in test_groups]
    _write_text(root / "trainlist01.txt", "".join(train))
    _write_text(root / "testlist01.txt", "".join(test))
    return {
        "root": str(root),
        "classes": list(ACTION_CLASSES),
        "clips": len(ACTION_CLASSES) * clips_per_class,
        "train": len(train),
        "test": len(test),
        "groups": len(sizes),
        "test_groups": test_groups,
        "faults": faults,
        "written": len(todo),
        "reused": len(jobs) - len(todo),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _run_jobs(jobs: list[ClipJob], workers: int, progress: bool) -> None:
    """Render the clips, in worker processes when there are several."""
    bar = progress_bar(total=len(jobs), disable=not progress, desc="actions", unit="clip")
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            render_clip(job)
            bar.update()
    else:
        # "spawn": safe even if the caller already imported TensorFlow (forking a threaded process is not).
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(render_clip, jobs):
                bar.update()
    bar.close()
