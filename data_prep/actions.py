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
when the hands meet, a footstep when a heel lands). One clip, module by module:

```
(seed, action, group, clip)  --action_settings.clip_rngs-->  [settings, motion, sound, noise] generators
  settings --draw_settings--> ClipSettings (W x H, fps, T frames, sample rate, C channels, camera, microphone)
  (seed, group) --draw_group--> Actor, Scene (one look per group)
  t: float [T] --ACTIONS[action] motion (action_motion)--> Motion: pose over T frames + cue times
  Motion.cues --ACTIONS[action] sound, render_audio (action_sounds)--> audio: float32 [C, N]
  Motion, Actor, Scene --render_frames (action_render)--> frames: uint8 [T, H, W, 3] BGR
  frames, audio --write_mp4--> out/<Action>/v_<Action>_gGG_cCC.mp4
```

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

With `with_faults`, the folder also gets the broken files a real dataset has (FAULTS:
empty, truncated, no audio track, not a video, a class folder missing from classInd.txt),
so the pipeline's handling of bad input can be seen and tested.

Every clip is drawn from its own random generators seeded by
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from data_prep.action_motion import (
    dance_motion,
    hands_meet_motion,
    jump_motion,
    kick_motion,
    run_motion,
    sit_down_motion,
    stand_up_motion,
    walk_motion,
    wave_motion,
)
from data_prep.action_render import render_frames
from data_prep.action_settings import ClipSettings, clip_rngs, draw_group, draw_settings
from data_prep.action_sounds import (
    clap_sound,
    creak_sound,
    jump_sound,
    kick_sound,
    knock_sound,
    render_audio,
    run_sound,
    walk_sound,
    wave_sound,
)
from pipeline.errors import UserError
from pipeline.files import atomic_write_text, temp_path
from pipeline.progress import progress_bar

# ---------------------------------------------------------------------------
# The classes: which motion, which sound. The pairs share a function on purpose.
# ---------------------------------------------------------------------------

ACTION_CLASSES = ["Walk", "Run", "Jump", "Kick", "Wave", "Clap", "Knock", "SitDown", "StandUp"]
LOOK_ALIKE = ("Clap", "Knock")  # same motion distribution, different sound
SOUND_ALIKE = ("SitDown", "StandUp")  # same sound distribution, time-reversed motion

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

# A class folder that is not in classInd.txt (a fault): a valid clip of an action outside the class list.
UNKNOWN_CLASS = "Dance"
_ALL_ACTIONS = {**ACTIONS, UNKNOWN_CLASS: (dance_motion, clap_sound)}

# Bump when drawing or sound synthesis changes: clips written by another version are not reused.
# 2: sizes up to 640x480 and 16:9, figure size 0.35-0.72, camera drift
GENERATOR_VERSION = 3  # 3: portrait sizes (9:16, 3:4), the figure framed in the central W x W square
STATE_FILE = ".make_actions.json"  # {"generator": GENERATOR_VERSION, "seed": seed} of the clips in the folder


# ---------------------------------------------------------------------------
# One clip: pictures and sound, then the MP4 file.
# ---------------------------------------------------------------------------


def clip_media(seed: int, action: str, group: int, clip: int) -> tuple[ClipSettings, Iterator[np.ndarray], np.ndarray]:
    """What clip (action, group, clip) shows and sounds like, before encoding.

    Returns (settings, frames, audio): frames yields T arrays uint8 [H, W, 3] (BGR) lazily;
    audio is float32 [C, N] in [-1, 1]. `action` is one of ACTIONS or UNKNOWN_CLASS.
    """
    settings_rng, motion_rng, sound_rng, noise_rng = clip_rngs(seed, action, group, clip)
    settings = draw_settings(settings_rng)
    actor, scene = draw_group(seed, group)
    motion_fn, sound_fn = _ALL_ACTIONS[action]
    t = np.arange(settings.n_frames) / settings.fps
    motion = motion_fn(t, motion_rng)
    # The sound track first: it and the frames both draw from noise_rng, in this order.
    audio = render_audio(motion, sound_fn, settings, sound_rng, noise_rng)
    frames = render_frames(motion, actor, scene, settings, noise_rng)
    return settings, frames, audio


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


def render_clip(job: ClipJob) -> str:
    """Render, encode and atomically write one clip; returns its relative path."""
    clip, frames, audio = clip_media(job.seed, job.action, job.group, job.clip)
    if job.fault == "no_audio":
        audio = None
    path = Path(job.root) / job.rel_path
    tmp = temp_path(path)
    try:
        write_mp4(tmp, frames, clip.fps, (clip.width, clip.height), audio, clip.sample_rate)
        if job.fault == "truncated":  # what an interrupted download leaves: the start of a valid file
            data = tmp.read_bytes()
            tmp.write_bytes(data[: int(len(data) * 0.4)])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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


def prepare_root(root: Path, seed: int) -> bool:
    """Create/validate the output folder; True if the clips already there can be reused.

    A folder is ours if it holds STATE_FILE; anything else that is not empty is refused
    rather than written into (it may be someone's real dataset).
    """
    state = root / STATE_FILE
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
        atomic_write_text(state, json.dumps(wanted))
    atomic_write_text(root / "classInd.txt", "".join(f"{i} {name}\n" for i, name in enumerate(ACTION_CLASSES, 1)))
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
    reusable = prepare_root(root, seed)
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
                atomic_write_text(root / rel, "")
            elif kind == "text":
                atomic_write_text(root / rel, "This is not a video. It was saved with the wrong extension.\n")

    todo = [job for job in jobs if not (reusable and (root / job.rel_path).exists())]
    _run_jobs(todo, workers, progress)

    # Split files last: they only ever list clips that exist. UCF101 order: class, group, clip.
    label = {name: i for i, name in enumerate(ACTION_CLASSES, 1)}
    listed = [job for job in jobs if job.action in label and (job.fault is None or FAULTS[job.rel_path][1])]
    listed.sort(key=lambda job: (label[job.action], job.group, job.clip))
    train = [f"{job.rel_path} {label[job.action]}\n" for job in listed if job.group not in test_groups]
    test = [f"{job.rel_path}\n" for job in listed if job.group in test_groups]
    atomic_write_text(root / "trainlist01.txt", "".join(train))
    atomic_write_text(root / "testlist01.txt", "".join(test))
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
