"""The open-set labels of a keyword spotter (the Speech Commands v2-12 protocol).

A 12-label speech run knows its keywords (data.keywords) plus two labels that mean "none of these":

    _silence_  1-s windows cut from the recordings in <root>/_background_noise_/ (no speech at all)
    _unknown_  every word folder that is not a keyword (bed, bird, cat, ... in Speech Commands v2)

A prediction of either, or of a keyword below the confidence threshold, is a rejection.
"""

from __future__ import annotations

from collections.abc import Sequence

SILENCE = "_silence_"
UNKNOWN = "_unknown_"
BACKGROUND_NOISE = "_background_noise_"  # the folder of long noise recordings, not a class
REJECT_LABELS = (SILENCE, UNKNOWN)


def is_open_set(classes: Sequence[str]) -> bool:
    """True when the class list can say "none of these" (has _silence_ or _unknown_)."""
    return any(c in REJECT_LABELS for c in classes)


def keyword_ids(classes: Sequence[str]) -> list[int]:
    """Indices of the classes that are keywords (everything but _silence_ and _unknown_)."""
    return [i for i, c in enumerate(classes) if c not in REJECT_LABELS]


def reject_clips(keyword_clips: int, shares: dict[str, float]) -> dict[str, int]:
    """{reject label: clips} that make each label its share of a set holding keyword_clips keyword clips.

    shares: {_unknown_/_silence_: share of the whole set}; the keywords take the rest (1 - their sum).
    """
    keyword_share = 1 - sum(shares.values())
    return {label: round(share / keyword_share * keyword_clips) for label, share in shares.items()}
