"""Drawing a clip's frames: the backdrop, the stick figure (and chair), and the camera.

```
Scene, width, height, framed, top --render_background--> backdrop: uint8 [height, width, 3] BGR
    render_frames asks for H + 2m rows and W + 2m + (camera pan) columns; m = 4 pixels of margin for shake
    framed = min(W, H): the side of the framed square; top = (H - framed) / 2: its first row (0 unless portrait)

Motion, Actor, Scene, ClipSettings, rng --render_frames--> frames: uint8 [H, W, 3] BGR, T of them (a generator)
    Motion.pose (+ idle sway)  --forward_kinematics--> joints in figure heights
    joints --to pixels--> mirrored for the facing, feet on Scene.ground of the framed square,
                          placed where ClipSettings.place says
    camera x: float [T]  pans with a travelling figure (ClipSettings.pan, at least enough to keep it in frame)
                         and drifts on its own (ClipSettings.drift)
    each frame = backdrop window at (camera + shake) + chair + figure + sensor noise
    W, H, T = ClipSettings.width, .height, .n_frames
```

Sizes are relative to the framed square, the central min(W, H) x min(W, H) square that
preprocessing crops (pipeline/media/video.py resize_and_crop), so a clip looks the same
at any resolution: on a landscape frame it is the horizontally central H x H square
(the figure is placed within its columns); on a portrait frame it is the vertically central
W x W square, which the whole figure and its motion stay inside (its height, ground
line, jumps and raised arms are all measured in it), while the wall and the floor fill
the whole frame, above and below the square too.
Lines are anti-aliased at 1/16-pixel precision (cv2's fixed-point `shift=4`), so
slow motion is smooth rather than stepping a pixel at a time. `rng` (the clip's
noise generator) draws the camera shake and the sensor noise, lazily: the frames
come out one at a time and the draws happen when the first frame is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import cv2
import numpy as np

from data_prep.action_motion import HEAD_R, Motion, forward_kinematics
from data_prep.action_settings import Actor, ClipSettings, Scene

_MARGIN = 4  # background pixels kept around the frame for camera shake


def render_background(scene: Scene, width: int, height: int, framed: int, top: int = 0) -> np.ndarray:
    """The group's backdrop: uint8 [height, width, 3] (BGR), patterns sized relative to `framed` pixels.

    `framed` is the side of the framed square (the frame height, or the width of a portrait frame) and
    `top` the frame row it starts at (0 unless portrait); the ground line is Scene.ground down that square.
    """
    rng = np.random.default_rng(scene.texture_seed)
    img = np.empty((height, width, 3), np.float32)
    img[:] = scene.wall
    rows = np.linspace(0, 1, height)[:, None, None]
    cols = np.arange(width)[None, :, None] / framed  # in square sides: same look at any resolution
    tall = (framed + 2 * top) / framed  # frame height / square side: exactly 1.0 unless portrait
    if scene.style == "vgradient":
        img = img * (1 - rows) + np.array(scene.wall2) * rows
    elif scene.style == "hgradient":
        blend = 0.5 + 0.5 * np.cos(cols * rng.uniform(1.0, 2.5))
        img = img * (1 - blend) + np.array(scene.wall2) * blend
    elif scene.style == "rects":
        # A fixed list of rectangles over 12 square sides of width, so a panning camera sees more of the same wall;
        # spread over the whole frame height (a portrait frame's wall goes on above the square).
        for _ in range(60):
            x, y = rng.uniform(0, 12), rng.uniform(-0.1, 0.8) * tall
            w, h = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.4)
            colour = tuple(float(c) for c in np.clip(np.array(scene.wall2) + rng.integers(-40, 40, 3), 0, 255))
            p0 = (int(x * framed), int(y * framed))
            p1 = (int((x + w) * framed), int((y + h) * framed))
            cv2.rectangle(img, p0, p1, colour, -1)
    elif scene.style == "texture":
        # 8 cells per square side, 12 sides wide (and as many rows as the frame is tall: 8 unless portrait)
        cells = rng.standard_normal((max(8, round(8 * tall)), 96, 3)).astype(np.float32)
        needed = max(2, math.ceil(width / framed * 8) + 1)
        blobs = cv2.resize(cells[:, :needed], (int(needed * framed / 8), height), interpolation=cv2.INTER_CUBIC)
        img += 15 * blobs[:, :width]
    ground = _MARGIN + top + int(scene.ground * framed)
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
    # Everything is measured in the framed square (what preprocessing's centre crop keeps): the frame height on
    # a landscape frame; on a portrait frame the vertically central W x W square, starting `top` rows down.
    framed = min(W, H)
    top = (H - framed) // 2  # 0 unless portrait (even sizes: exact)
    scale = actor.size * scene.ground * framed  # figure height in pixels
    ground = _MARGIN + top + scene.ground * framed  # in background coordinates

    def to_px(p):
        return np.stack([clip.facing * p[..., 0] * scale, ground - p[..., 1] * scale], axis=-1)

    px = {name: to_px(p) for name, p in joints.items()}  # world x still relative (placed below)

    # A travelling figure: the camera pans by a fraction of the travel, enough to keep it in frame.
    travel = px["hip"][:, 0] - px["hip"][0, 0]  # [T]
    span = np.ptp(travel)
    room = 0.6 * W
    # (follow = 1 - room/span is the least panning that keeps the on-screen path within `room`)
    follow = max(clip.pan, 1 - room / span) if span > room else clip.pan * 0.5
    camera = np.minimum(follow, 0.97) * travel + clip.drift * W * t  # following the figure, and drifting on its own
    camera -= camera.min()  # >= 0: offset into the (wider) background

    # Place the figure: its whole on-screen path within the frame margins, where `place` says.
    everything = np.concatenate([p.reshape(T, -1, 2) for p in px.values()], axis=1)  # [T, J, 2]
    on_screen = everything[..., 0] - camera[:, None]
    lo, hi = on_screen.min() - HEAD_R * scale, on_screen.max() + HEAD_R * scale
    # On a wide frame, within its central square: where a camera operator frames the subject.
    margin = 0.05 * framed + (W - framed) / 2
    left, right = margin - lo, W - margin - hi
    shift = left + clip.place * (right - left) if right >= left else (W - lo - hi) / 2
    shift += _MARGIN  # world x of screen x 0 is _MARGIN + camera
    for p in px.values():
        p[..., 0] += shift
    seat = None
    if motion.chair:
        seated = int(np.argmin(joints["hip"][:, 1]))
        seat = px["hip"][seated] + np.array([0.0, 0.04 * scale])

    background = render_background(scene, W + 2 * _MARGIN + math.ceil(camera.max()) + 1, H + 2 * _MARGIN, framed, top)
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
