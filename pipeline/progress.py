"""Progress bars for long work: live on a terminal, a line every 30 s in logs and CI."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, **kwargs):
    """tqdm with sensible defaults; when stderr is not a terminal, redraws at most every 30 s instead of
    flooding the log with carriage-return updates."""
    from tqdm import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def keras_verbosity(progress: bool) -> int:
    """Keras fit() verbosity: a live bar on a terminal, one line per epoch in logs and CI (Keras'
    bar redraws every batch and would flood them), one line per epoch when progress is off too."""
    return 1 if progress and sys.stdout.isatty() else 2
