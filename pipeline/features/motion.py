"""The `motion` frame encoder: how things move in each horizontal strip of the frame, with no weights to learn.

    frames: uint8 [..., T, S, S, 3] RGB --motion_features--> float32 [..., T, D], D = STRIPS * (3 + DIRECTIONS)

Gradient-based optical flow (Horn & Schunck's brightness constancy, Lucas & Kanade's least squares),
pooled the way classic action recognition pools it (Efros et al. 2003's half-wave rectified flow
channels, Laptev's histograms of flow):

```
frames --luma, 5x5 binomial blur (reflect border)--> I: [..., T, S, S]
I_t - I_t-1 = It, (I_t + I_t-1) / 2 --central differences (reflect border)--> Ix, Iy: [..., T-1, S, S]
per pixel:  normal flow w = -It * (Ix, Iy) / (Ix^2 + Iy^2 + FLOW_PRIOR)          (pixels per frame)
per strip (STRIPS horizontal bands of S / STRIPS rows, the whole width), 3 + DIRECTIONS numbers:
    u, v   = sum(-It * Ix), sum(-It * Iy) / sum(Ix^2 + Iy^2 + FLOW_PRIOR)   the strip's least-squares translation
    energy = log(1 + mean |It|)                                        how much changed
    flow_k = log(1 + sum relu(w . d_k)), d_k = DIRECTIONS unit vectors  rectified flow projected on each direction
frame 0 has no predecessor: its row is zeros
```

Why these: a static background and the actor's colours give It = 0 (what a random CNN is swamped by),
-It * Ix does not depend on whether an edge is light-on-dark or dark-on-light, strips pool over the
whole width so where the actor stands does not matter while the rows still tell the head from the
feet, and SitDown / StandUp differ exactly in the sign of v. On a moving camera everything moves;
the model learns that from clips with pans (data_prep's camera follows a walking figure).

`motion_features` is the numpy reference (preprocessing computes the cache with it);
`pipeline.features.encoders.MotionFeatures` is the same transform in-graph (the exported model's).
"""

from __future__ import annotations

import numpy as np

STRIPS = 8  # horizontal bands pooled separately (rows: head, arms, legs ...)
DIRECTIONS = 8  # flow directions, every 45 degrees
FLOW_PRIOR = 25.0  # grey levels^2: keeps w small where the image has no gradient (flat regions)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> grey (ITU-R BT.601)
BLUR = np.array([1, 4, 6, 4, 1], np.float32) / 16  # separable binomial ~ Gaussian sigma 1
MOTION_DIM = STRIPS * (3 + DIRECTIONS)


def direction_vectors() -> np.ndarray:
    """float32 [2, DIRECTIONS]: unit vectors (x, y) every 360 / DIRECTIONS degrees, image y pointing down."""
    angles = 2 * np.pi * np.arange(DIRECTIONS) / DIRECTIONS
    return np.stack([np.cos(angles), np.sin(angles)]).astype(np.float32)


def _blur(x: np.ndarray) -> np.ndarray:
    """[..., S, S] -> [..., S, S]: separable BLUR along rows and columns, reflect border."""
    lead = [(0, 0)] * (x.ndim - 2)
    x = np.pad(x, [*lead, (2, 2), (0, 0)], mode="reflect")
    x = sum(w * x[..., i : i + x.shape[-2] - 4, :] for i, w in enumerate(BLUR))
    x = np.pad(x, [*lead, (0, 0), (2, 2)], mode="reflect")
    return sum(w * x[..., i : i + x.shape[-1] - 4] for i, w in enumerate(BLUR))


def _strip_sum(x: np.ndarray) -> np.ndarray:
    """[..., S, S] -> [..., STRIPS]: the sum over each band of S / STRIPS rows."""
    return x.reshape(*x.shape[:-2], STRIPS, -1).sum(-1)


def motion_features(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., T, S, S, 3] RGB -> float32 [..., T, MOTION_DIM] (see the module docstring)."""
    frames = np.asarray(frames)
    *lead, t, s, _, _ = frames.shape
    grey = _blur(frames.astype(np.float32) @ LUMA)
    it = grey[..., 1:, :, :] - grey[..., :-1, :, :]
    mean = 0.5 * (grey[..., 1:, :, :] + grey[..., :-1, :, :])
    padded = np.pad(mean, [(0, 0)] * (mean.ndim - 2) + [(1, 1), (1, 1)], mode="reflect")
    ix = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    iy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    gradient = ix**2 + iy**2
    support = _strip_sum(gradient + FLOW_PRIOR)
    u, v = _strip_sum(-it * ix) / support, _strip_sum(-it * iy) / support
    energy = np.log1p(_strip_sum(np.abs(it)) / (s * s / STRIPS))
    wx, wy = -it * ix / (gradient + FLOW_PRIOR), -it * iy / (gradient + FLOW_PRIOR)
    d = direction_vectors()
    flow = [np.log1p(_strip_sum(np.maximum(wx * d[0, k] + wy * d[1, k], 0.0))) for k in range(DIRECTIONS)]
    per_strip = np.stack([u, v, energy, *flow], -1)  # [..., T-1, STRIPS, 3 + DIRECTIONS]
    out = per_strip.reshape(*per_strip.shape[:-2], MOTION_DIM)
    return np.concatenate([np.zeros((*lead, min(t, 1), MOTION_DIM), np.float32), out], -2).astype(np.float32)
