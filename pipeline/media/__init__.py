"""Reading media files: OpenCV video decoding and frame sampling, audio tracks and WAVs.

Nothing here knows about Keras; arrays in, arrays out.
"""

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class MediaError(Exception):
    """A file that cannot be used as media; the message is the reason (one line)."""
