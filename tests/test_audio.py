"""pipeline.media.audio: loading sound files and video soundtracks, resampling, fixed-length windows."""

from __future__ import annotations

import fractions
import shutil
import subprocess

import av
import numpy as np
import pytest
import soundfile

from pipeline.media import MediaError
from pipeline.media.audio import fit_length, load_audio

SR = 16000
TONE_HZ = 440.0


def _tone(rate: int, seconds: float = 1.0, hz: float = TONE_HZ) -> np.ndarray:
    """float32 [rate * seconds]: a 0.5-amplitude sine with 10 ms fades (no clicks for lossy codecs to ring on)."""
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * hz * t)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
    return (x * fade).astype(np.float32)


def write_clip(path, video_codec="libx264", audio_codec="aac", audio_rate=44100, layout="mono", seconds=1.0, faststart=False):
    """A tiny clip: 10 fps 64x64 frames unless video_codec is None, plus `_tone` in an audio track unless
    audio_codec is None.

    faststart puts the MP4 index (moov) before the media data, as streaming sites do.
    """
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4" if path.suffix == ".m4a" else None, options=options) as container:
        video = container.add_stream(video_codec or "libx264", rate=10)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = None
        if audio_codec:
            audio = container.add_stream(audio_codec, rate=audio_rate)
            audio.layout = layout
        for i in range(int(10 * seconds) if video_codec else 0):
            image = np.full((64, 64, 3), (i * 25) % 256, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode() if video_codec else []:
            container.mux(packet)
        if audio is not None:
            tone = _tone(audio_rate, seconds)
            channels = 2 if layout == "stereo" else 1
            for start in range(0, tone.shape[0], 1024):
                chunk = np.tile(tone[None, start : start + 1024], (channels, 1))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = audio_rate, start, fractions.Fraction(1, audio_rate)
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def peak_hz(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(waveform.shape[0])))
    return float(np.argmax(spectrum) * rate / waveform.shape[0])


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def speech_wav(media_dir):
    """Real speech: espeak-ng writes 22050 Hz mono 16-bit WAV."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    path = media_dir / "stop.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "stop"], check=True, capture_output=True)
    return path


def test_wav_is_resampled_to_mono_float32(speech_wav):
    raw, rate = soundfile.read(str(speech_wav), dtype="float32")
    assert rate == 22050 and raw.ndim == 1

    waveform = load_audio(speech_wav, SR)

    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(waveform.shape[0] - raw.shape[0] * SR / rate) <= 1
    assert np.abs(waveform).max() <= 1.0
    # Same sound: the RMS level survives resampling (speech has little energy above 8 kHz).
    assert np.sqrt(np.mean(waveform**2)) == pytest.approx(np.sqrt(np.mean(raw**2)), rel=0.02)


def test_same_rate_is_returned_unchanged(speech_wav):
    raw, rate = soundfile.read(str(speech_wav), dtype="float32")
    np.testing.assert_array_equal(load_audio(speech_wav, rate), raw)


def test_stereo_is_averaged_to_mono(media_dir):
    left, right = _tone(SR), _tone(SR, hz=1000.0)
    path = media_dir / "stereo.wav"
    soundfile.write(str(path), np.stack([left, right], axis=1), SR, subtype="FLOAT")

    waveform = load_audio(path, SR)

    np.testing.assert_allclose(waveform, (left + right) / 2, atol=1e-6)


def test_flac_and_ogg(media_dir):
    for name, fmt in [("tone.flac", "FLAC"), ("tone.ogg", "OGG")]:
        path = media_dir / name
        soundfile.write(str(path), _tone(44100), 44100, format=fmt)
        waveform = load_audio(path, SR)
        assert abs(waveform.shape[0] - SR) <= 1
        assert peak_hz(waveform, SR) == pytest.approx(TONE_HZ, abs=2)


def test_voice_memo_m4a(media_dir):
    """AAC in an audio-only MP4 (.m4a, what phones record): libsndfile cannot read it, FFmpeg does."""
    from pipeline.media.probe import probe_media

    path = write_clip(media_dir / "memo.m4a", video_codec=None, audio_rate=44100)
    info = probe_media(path)
    assert info.has_audio and not info.has_video
    waveform = load_audio(path, SR)
    assert abs(waveform.shape[0] - SR) <= 0.05 * SR  # AAC priming and padding add a few ms
    assert peak_hz(waveform, SR) == pytest.approx(TONE_HZ, abs=2)


@pytest.mark.parametrize(
    "name, video_codec, audio_codec, audio_rate, layout",
    [
        ("clip.mp4", "libx264", "aac", 44100, "mono"),  # H.264 + AAC, the common case
        ("clip.mkv", "libx264", "libopus", 48000, "stereo"),
        ("clip.webm", "libvpx", "libopus", 48000, "mono"),  # VP8 + Opus
    ],
)
def test_audio_track_of_a_video(media_dir, name, video_codec, audio_codec, audio_rate, layout):
    path = write_clip(media_dir / name, video_codec, audio_codec, audio_rate, layout)

    waveform = load_audio(path, SR)

    assert waveform.dtype == np.float32
    # Length within 5 ms of the 1 s source: AAC's encoder padding is trimmed via the MP4 edit list.
    assert abs(waveform.shape[0] - SR) <= 0.005 * SR
    assert peak_hz(waveform, SR) == pytest.approx(TONE_HZ, abs=2)
    # Lossy, but the same sound: level and shape agree with the source sine.
    source = _tone(SR)
    n = min(source.shape[0], waveform.shape[0])
    assert np.corrcoef(source[:n], waveform[:n])[0, 1] > 0.99


def test_video_without_audio(media_dir):
    path = write_clip(media_dir / "silent.mp4", audio_codec=None)
    with pytest.raises(MediaError, match="no audio track"):
        load_audio(path, SR)


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.wav", b""),
        ("empty.mp4", b""),
        ("notes.wav", b"this is not audio\n" * 20),
        ("notes.mp4", b"this is not a video\n" * 20),
    ],
)
def test_unusable_files_raise_one_line_media_error(media_dir, name, content):
    path = media_dir / name
    path.write_bytes(content)
    with pytest.raises(MediaError) as info:
        load_audio(path, SR)
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_video(media_dir, faststart):
    """Cut in half: without faststart the index (written last) is lost; with it, the data ends early."""
    whole = write_clip(media_dir / f"whole{faststart}.mp4", seconds=2.0, faststart=faststart).read_bytes()
    path = media_dir / f"truncated{faststart}.mp4"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaError) as info:
        load_audio(path, SR)
    assert "\n" not in str(info.value)


def test_truncated_wav(speech_wav, media_dir):
    whole = speech_wav.read_bytes()
    path = media_dir / "truncated.wav"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaError, match="truncated"):
        load_audio(path, SR)


def test_missing_file(media_dir):
    with pytest.raises(MediaError, match="not found"):
        load_audio(media_dir / "nope.wav", SR)


def test_fit_length_crops_the_centre():
    waveform = np.arange(10, dtype=np.float32)
    window, valid = fit_length(waveform, 4)
    np.testing.assert_array_equal(window, [3, 4, 5, 6])
    assert valid == 4 and window.dtype == np.float32


def test_fit_length_pads_the_end_with_zeros():
    waveform = np.ones(3, dtype=np.float32)
    window, valid = fit_length(waveform, 5)
    np.testing.assert_array_equal(window, [1, 1, 1, 0, 0])
    assert valid == 3


def test_fit_length_exact():
    waveform = np.linspace(-1, 1, 7, dtype=np.float32)
    window, valid = fit_length(waveform, 7)
    np.testing.assert_array_equal(window, waveform)
    assert valid == 7
