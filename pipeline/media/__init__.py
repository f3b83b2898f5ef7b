"""Reading media files: OpenCV video decoding and frame sampling, audio tracks and WAVs.

Nothing here knows about Keras; arrays in, arrays out.
"""

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus")  # .m4a: phone voice memos


class MediaError(Exception):
    """A file that cannot be used as media; the message is the reason (one line)."""


def check_readable(path) -> None:
    """Raise MediaError unless path is an existing, readable, non-empty file."""
    import os
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise MediaError("file not found")
    if not os.access(path, os.R_OK):
        raise MediaError("file not readable (permissions)")
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")
