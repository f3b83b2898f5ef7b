"""What each clip is recorded with: the group's actor and scene, the clip's camera and microphone.

Everything random about a clip except the action itself is drawn here, from
generators keyed by the clip's identity, never by the order clips are made in:

```
(seed, group)               --draw_group-->    Actor  figure size, limb thickness, BGR colours
                                               Scene  backdrop style and colours, ground line
(seed, action, group, clip) --clip_rngs-->     [settings, motion, sound, noise]: 4 independent np.random.Generator
settings generator          --draw_settings--> ClipSettings
    width x height, fps, n_frames (T), sample_rate, channels (C);   the recording format
    facing, place, pan, drift, sway, jitter, pixel_noise, chair;    the camera and the picture
    gain, noise_level, noise_cutoff, hum, balance                   the microphone and the room
```

A group `gNN` is one actor in front of one background, shared by every class (like
UCF101's groups). The recording settings are drawn the same way for every class, so
no class can be told apart by its frame size (landscape or portrait), frame rate or
sample rate.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

# Per-clip recording settings, drawn uniformly from these choices.
FPS_CHOICES = (15, 20, 24, 25, 30)
# (width, height), even for yuv420p. Landscape: 4:3 from 160x120 to 640x480, and 16:9 (cameras, phones held
# sideways). Portrait: 9:16 and 3:4 (phones held upright); the figure stays in the central W x W square.
LANDSCAPE_SIZES = ((160, 120), (240, 180), (320, 240), (640, 480), (320, 180), (480, 270), (640, 360))
PORTRAIT_SIZES = ((180, 320), (270, 480), (360, 640), (240, 320))
SIZE_CHOICES = LANDSCAPE_SIZES + PORTRAIT_SIZES
SAMPLE_RATES = (16000, 22050, 44100)
DURATION_RANGE = (1.5, 4.0)  # seconds


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

    size: float  # figure height as a fraction of the ground line's height in the framed square (see Scene.ground)
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
    ground: float  # ground line as a fraction of the framed square's height: the frame height, or W on a portrait frame
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
        size=float(rng.uniform(0.35, 0.72)),  # small in the distance to filling the frame (a jump still fits)
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

    width: int  # W pixels
    height: int  # H pixels
    fps: int
    n_frames: int  # T
    sample_rate: int  # Hz
    channels: int  # C: 1 (mono) or 2 (stereo)
    facing: int  # +1 faces/moves right, -1 left
    place: float  # 0..1: where in the free horizontal room the figure stands
    pan: float  # 0..1: how much the camera follows a moving figure
    drift: float  # the camera's own pan, frame widths per second (a handheld camera); 0 for a tripod
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
    """One clip's recording settings, from its settings generator (see clip_rngs)."""
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
        drift=float(rng.uniform(-0.1, 0.1) if rng.random() < 0.5 else 0.0),
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


def clip_rngs(seed: int, action: str, group: int, clip: int) -> list[np.random.Generator]:
    """The clip's independent generators: [settings, motion, sound, noise]."""
    keys = np.random.SeedSequence([seed, _name_key(action), group, clip]).spawn(4)
    return [np.random.default_rng(k) for k in keys]


def clip_settings(seed: int, action: str, group: int, clip: int) -> ClipSettings:
    """The recording settings (size, fps, frames, sample rate, ...) clip (action, group, clip) gets."""
    return draw_settings(clip_rngs(seed, action, group, clip)[0])
