"""The stick figure's motion: one function per action turns frame times into a pose over time.

A motion function draws everything it needs from its own generator and returns the
figure's joint angles at every frame, plus the times of the events its sound is
placed on (a heel strike, a clap, a landing):

```
t: float [T] (frame times, s), rng --walk_motion, run_motion, ...--> Motion
    Motion.pose: Pose         x, lift, lean: float [T]; shoulder, elbow, hip, knee: float [T, 2] (near, far)
    Motion.cues: {name: ...}  event times in seconds for the sound, e.g. steps: float [K], swings: float [K, 2]
    Motion.chair: bool        draw a chair under the lowest hip position (sitting down / standing up)

Pose --forward_kinematics--> joints: {hip, neck, head, shoulder: float [T, 2];
                                      elbow, hand, knee, ankle, toe: float [T, 2, 2] (near, far)}
                             (forward, up) positions in figure heights, the lowest foot on the ground
```

Poses are keyframed: `key(...)` is a standing pose with some channels changed, and
`animate(t, times, keys)` eases through the key poses (cosine easing: zero velocity
at each key). Gaits (walk, run) are periodic functions of the stride phase instead.

Lengths are in figure heights; angles in radians measured from straight down,
positive towards the facing direction. Pairs are (near, far) limbs: the renderer
draws the far one first and darker. Nothing here knows pixels, colours or sound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------
# The figure: limb lengths, the pose over time, key poses and forward kinematics.
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
    """What a motion function returns: the pose over time and the cue times for the sound.

    cues (seconds), by motion:
      steps: float [K]                                   walk, run: heel strikes
      takeoffs, landings: float [K]                      jump
      swings: float [K, 2] (start, top), impacts: [K]    kick
      swish: float [2, T] (frame times, hand speed 0-1)  wave
      hits: float [K]                                    hands meet (clap, knock), dance beats
      transition: float [2] (start, end)                 sit down, stand up
    """

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


# Not one of the dataset's classes: the clip in a class folder missing from classInd.txt (a fault file).
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
