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
        if path.is_symlink() and not path.exists():
            raise MediaError("broken symbolic link (or a link loop)")
        if path.exists():
            raise MediaError("not a regular file (a folder, FIFO or device)")
        raise MediaError("file not found")
    if not os.access(path, os.R_OK):
        raise MediaError("file not readable (permissions)")
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")


# First bytes of the containers libsndfile reads (WAV/RF64/BWF, AIFF, FLAC, Ogg, CAF, AU).
_SOUNDFILE_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"FORM", b"fLaC", b"OggS", b"caff", b".snd")


def soundfile_first(path) -> bool:
    """True when libsndfile should try `path` before FFmpeg: its first bytes are a container libsndfile knows, or it
    is an MP3 (libsndfile's mpg123). Anything else (random bytes, an MP4 named .wav) goes straight to FFmpeg: libsndfile
    would refuse it anyway, after its MP3 sniffer printed "Note: Illegal Audio-MPEG-Header" lines on stderr."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() == ".mp3":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) in _SOUNDFILE_MAGIC
    except OSError:
        return True  # let the reader give its own error
