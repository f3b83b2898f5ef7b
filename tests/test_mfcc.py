"""pipeline.features.mfcc: the in-model MFCC layer against librosa, TFLite, normalisation, tfio loading."""

from __future__ import annotations

import os
import shutil
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from data_prep.commands import make_commands  # noqa: E402
from pipeline.config import PreprocessConfig  # noqa: E402
from pipeline.features.mfcc import RUNNING_PRIOR_FRAMES, MFCCParams, dataset_stats, librosa_mfcc, normalize_mfcc  # noqa: E402
from pipeline.features.mfcc_layers import MFCC, MFCCNormalization, tfio_load_audio  # noqa: E402
from pipeline.media.audio import fit_length, load_audio  # noqa: E402

SR = 16000
# Absolute tolerance on raw (unnormalised) MFCCs, layer (float32) vs librosa (float64). Their scale:
# coefficient 0 reaches ~550 in magnitude (a silent frame sits at sqrt(n_mels) x the top_db floor,
# ~6.3 x -80 dB), the others stay within ~170. So 1e-4 is 2e-7 of the largest values: 2-3 float32
# ulps (the spacing of float32 is 3.1e-5 between 256 and 512, 6.1e-5 between 512 and 1024).
# Measured: 6.1e-5 (clean and noisy speech alike; a plain float32 FFT gave 1.8e-4 on clean speech).
MFCC_ATOL = 1e-4


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    """Real speech at 22050 Hz (espeak-ng's rate), ~2.4 s."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    path = tmp_path_factory.mktemp("speech") / "command.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "stop, go left, turn on the lights"], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def commands_speech(tmp_path_factory):
    """float32 [30, 16000]: the 10 words of data_prep.commands said by 3 speakers, clean and noisy."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    root = tmp_path_factory.mktemp("commands")
    make_commands(root, per_word=3, seed=0, progress=False, workers=1, aux_per_speaker=0, background_seconds=0)
    return np.stack([load_audio(path, SR) for path in sorted(root.glob("*/*.wav"))])


@pytest.fixture(scope="module")
def speech(speech_wav):
    """float32 [N] at 16 kHz."""
    return load_audio(speech_wav, SR)


@pytest.fixture(scope="module")
def one_second(speech):
    """float32 [16000]: the middle second of the speech, what the exported model is fed."""
    return fit_length(speech, SR)[0]


def test_layer_matches_librosa_on_spoken_commands(commands_speech):
    """The parity claim: every clip of a small data_prep.commands set, within MFCC_ATOL."""
    params = MFCCParams()
    expected = np.stack([librosa_mfcc(clip, params) for clip in commands_speech])  # [30, 101, 20]

    got = MFCC.from_params(params)(commands_speech).numpy()

    assert got.shape == expected.shape == (30, params.num_frames(SR), params.n_mfcc)
    diff = np.abs(got - expected)
    scale = np.abs(expected)
    print(f"\nspoken commands: max |MFCC layer - librosa| {diff.max():.2e}, mean {diff.mean():.1e}; "
          f"MFCC values up to {scale.max():.0f} (coefficient 0), {scale[..., 1:].max():.0f} (others)")
    # Clean clips (digital silence around the word) are the hard case: their quiet frames have
    # mel bands ~75 dB below the frame's loudest that still count. Make sure the set has them.
    assert (commands_speech == 0).mean(axis=1).max() > 0.5
    assert diff.max() <= MFCC_ATOL


@pytest.mark.parametrize("deltas", [False, True], ids=["mfcc", "mfcc+deltas"])
def test_layer_matches_librosa(speech, deltas):
    params = MFCCParams(deltas=deltas)
    expected = librosa_mfcc(speech, params)

    got = MFCC.from_params(params)(speech[None])[0].numpy()

    frames = 1 + speech.shape[0] // params.hop_length
    assert expected.shape == got.shape == (frames, params.feature_dim)
    assert got.dtype == np.float32
    diff = np.abs(got - expected)
    print(f"\nmax |MFCC layer - librosa| (deltas={deltas}): {diff.max():.2e} (values up to {np.abs(expected).max():.0f}); "
          f"mean {diff.mean():.1e}; deltas only: {diff[:, params.n_mfcc:].max() if deltas else 0:.1e}")
    assert diff.max() <= MFCC_ATOL
    assert diff.mean() <= 1e-5
    if deltas:  # including the 4 edge frames on each side (librosa's mode="interp")
        assert diff[:, params.n_mfcc :].max() <= 2e-5


def test_layer_batches_and_symbolic_shape(speech):
    params = MFCCParams()
    layer = MFCC.from_params(params)
    batch = np.stack([speech[:8000], speech[-8000:]])
    out = layer(batch).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], librosa_mfcc(batch[i], params), atol=MFCC_ATOL)
    symbolic = layer(keras.Input(shape=(8000,)))
    assert tuple(symbolic.shape) == (None, params.num_frames(8000), params.n_mfcc)


def test_variable_length_input(speech):
    """A model with an unknown number of samples (shape (None,)) still computes the same MFCCs."""
    params = MFCCParams(deltas=True)
    inputs = keras.Input(shape=(None,))
    model = keras.Model(inputs, MFCC.from_params(params)(inputs))
    for n in (4000, 12345):
        np.testing.assert_allclose(model(speech[None, :n])[0].numpy(), librosa_mfcc(speech[:n], params), atol=MFCC_ATOL)


def test_deltas_need_nine_frames():
    too_short = np.zeros((1, 1000), np.float32)  # 7 frames
    with pytest.raises(ValueError, match="at least 9 frames"):
        MFCC(deltas=True)(too_short)
    with pytest.raises(ValueError, match="at least 9 frames"):
        librosa_mfcc(too_short[0], MFCCParams(deltas=True))


def test_params_from_config_and_frame_count():
    cfg = PreprocessConfig(n_mfcc=13, deltas=True, fmax=7600.0)
    params = MFCCParams.from_config(cfg)
    assert (params.sample_rate, params.n_mfcc, params.n_fft, params.hop_length) == (16000, 13, 512, 160)
    assert params.fmax_hz == 7600.0 and params.feature_dim == 39
    assert MFCCParams().fmax_hz == 8000.0
    for n in (1600, 16000, 16159, 16160, 16161):
        assert MFCCParams().num_frames(n) == 1 + n // 160 == librosa_mfcc(np.zeros(n, np.float32), MFCCParams()).shape[0]


def test_zero_padding_keeps_the_valid_frames(speech):
    """Why pad_mode="constant": frames of fit_length-padded audio up to num_frames(valid) equal the unpadded ones."""
    params = MFCCParams()
    short = speech[:12000]
    padded, valid = fit_length(short, 2 * SR)
    valid_frames = params.num_frames(valid)
    np.testing.assert_allclose(
        librosa_mfcc(padded, params)[:valid_frames], librosa_mfcc(short, params), atol=1e-4
    )


def _tflite_ops(model_content: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default delegates, so the listing shows the model's own ops, not XNNPACK's DELEGATE nodes.
    interpreter = Interpreter(
        model_content=model_content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def test_tflite_conversion_uses_builtins_and_matches(one_second):
    params = MFCCParams(deltas=True)
    inputs = keras.Input(shape=(SR,), batch_size=1)  # TFLite export graphs use a fixed batch of 1
    model = keras.Model(inputs, MFCCNormalization("utterance")(MFCC.from_params(params)(inputs)))
    mfcc_model = keras.Model(inputs, model.layers[1].output)

    content = tf.lite.TFLiteConverter.from_keras_model(mfcc_model).convert()
    ops = _tflite_ops(content)
    print("\nTFLite ops of the MFCC(deltas) model:", ", ".join(ops))
    assert not [op for op in ops if op.startswith("Flex")]
    assert "RFFT2D" in ops

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)  # LiteRT, as apps run it, XNNPACK included
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], one_second[None])
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
    keras_out = mfcc_model(one_second[None])[0].numpy()
    print(f"max |TFLite - Keras| {np.abs(got - keras_out).max():.2e}, "
          f"max |TFLite - librosa| {np.abs(got - librosa_mfcc(one_second, params)).max():.2e}")
    assert got.shape == (params.num_frames(SR), params.feature_dim)
    np.testing.assert_allclose(got, keras_out, atol=MFCC_ATOL)
    np.testing.assert_allclose(got, librosa_mfcc(one_second, params), atol=MFCC_ATOL)

    # The normalisation layer converts to builtins too.
    assert not [op for op in _tflite_ops(tf.lite.TFLiteConverter.from_keras_model(model).convert()) if op.startswith("Flex")]


@pytest.fixture(scope="module")
def mfcc_batch(speech):
    """float32 [2, F, C] MFCCs of two clips, and their valid frame counts (the second one padded)."""
    params = MFCCParams(deltas=True)
    first, valid_first = fit_length(speech, SR)
    second, valid_second = fit_length(speech[:9000], SR)
    features = np.stack([librosa_mfcc(first, params), librosa_mfcc(second, params)])
    return features, [params.num_frames(valid_first), params.num_frames(valid_second)]


@pytest.mark.parametrize("mode", ["utterance", "dataset", "running", "none"])
def test_normalization_numpy_and_keras_agree(mfcc_batch, mode):
    features, valid_frames = mfcc_batch
    stats = dataset_stats(zip(features, valid_frames)) if mode in ("dataset", "running") else None
    mean, std = stats if stats else (None, None)
    layer = MFCCNormalization(mode, mean=mean, std=std)
    num_frames = features.shape[1]
    mask = np.arange(num_frames)[None, :] < np.array(valid_frames)[:, None]  # [2, F]

    masked = layer(features, mask=mask).numpy()
    for i in range(2):
        expected = normalize_mfcc(features[i], valid_frames[i], mode, stats)
        np.testing.assert_allclose(masked[i], expected, atol=2e-5)
        assert not expected[valid_frames[i] :].any()  # padded frames are 0

    # Without a mask (deployment: one full window), statistics cover every frame.
    unmasked = layer(features).numpy()
    np.testing.assert_allclose(unmasked[0], normalize_mfcc(features[0], num_frames, mode, stats), atol=2e-5)


def test_utterance_normalization_is_standardised(mfcc_batch):
    features, valid_frames = mfcc_batch
    out = normalize_mfcc(features[1], valid_frames[1], "utterance")[: valid_frames[1]]
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)


def test_running_normalization_is_causal_starts_from_the_dataset_and_ends_near_the_utterance(mfcc_batch):
    """Frame t depends on frames up to t only; the first frame is normalised by the training statistics (almost);
    over a whole utterance, louder by 20 dB in c0, the running statistics catch up with the utterance's own."""
    features, valid_frames = mfcc_batch
    stats = dataset_stats(zip(features, valid_frames))
    x = features[0]
    whole = normalize_mfcc(x, len(x), "running", stats)
    np.testing.assert_allclose(normalize_mfcc(x[:40], 40, "running", stats), whole[:40], atol=1e-5)  # causal
    first = (x[0] - stats[0]) / stats[1]
    np.testing.assert_allclose(whole[0], first * np.sqrt((RUNNING_PRIOR_FRAMES + 1) / RUNNING_PRIOR_FRAMES), rtol=0.2, atol=0.05)
    louder = x.copy()
    louder[:, 0] += 20.0  # c0 is the level
    shift = 20.0 / stats[1][0]  # what dataset normalisation leaves of it, on every frame
    np.testing.assert_allclose(normalize_mfcc(louder, len(x), "dataset", stats)[:, 0] - normalize_mfcc(x, len(x), "dataset", stats)[:, 0],
                               shift, rtol=1e-3)
    end = normalize_mfcc(louder, len(x), "running", stats)[-20:]  # after 1 s: the prior weighs 25 of 126 frames
    assert np.abs(end - normalize_mfcc(x, len(x), "running", stats)[-20:])[:, 0].max() < 0.3 * shift


def test_dataset_stats_ignore_padding(mfcc_batch):
    features, valid_frames = mfcc_batch
    mean, std = dataset_stats(zip(features, valid_frames))
    valid = np.concatenate([f[:v] for f, v in zip(features, valid_frames)]).astype(np.float64)
    np.testing.assert_allclose(mean, valid.mean(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std, valid.std(axis=0), rtol=1e-4)


def test_bad_normalization_mode():
    with pytest.raises(ValueError, match="one of"):
        normalize_mfcc(np.zeros((5, 3), np.float32), 5, "global")
    with pytest.raises(ValueError, match="mean and std"):
        MFCCNormalization("dataset")


def test_saved_model_round_trip(tmp_path, one_second):
    params = MFCCParams(n_mfcc=13, deltas=True, fmax=7600.0)
    inputs = keras.Input(shape=(SR,))
    features = MFCC.from_params(params, name="mfcc")(inputs)
    outputs = MFCCNormalization("dataset", mean=np.linspace(-1, 1, 39), std=np.full(39, 2.0), name="norm")(features)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "mfcc.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)

    assert loaded.get_layer("mfcc").params == params
    assert loaded.get_layer("norm").get_config()["mode"] == "dataset"
    batch = one_second[None]
    np.testing.assert_array_equal(loaded(batch).numpy(), model(batch).numpy())


def test_tfio_loading_agrees_with_load_audio(speech_wav, speech):
    """tf.data path (tf.audio.decode_wav + tfio.audio.resample) vs soundfile + soxr, 22050 -> 16000 Hz."""
    dataset = tf.data.Dataset.from_tensor_slices([str(speech_wav)]).map(lambda path: tfio_load_audio(path, SR))
    waveform = next(iter(dataset)).numpy()

    assert waveform.dtype == np.float32 and waveform.shape == speech.shape
    error = waveform - speech
    correlation = np.corrcoef(waveform, speech)[0, 1]
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(error**2))
    print(f"\ntfio vs load_audio: correlation {correlation:.5f}, max |diff| {np.abs(error).max():.4f} "
          f"(peak {np.abs(speech).max():.2f}), SNR {snr:.1f} dB")
    assert correlation > 0.99
    assert snr > 20
    # The MFCCs a model sees barely move (differences come from the resamplers' filters near 8 kHz).
    params = MFCCParams()
    mfcc_diff = np.abs(librosa_mfcc(waveform, params) - librosa_mfcc(speech, params))
    print(f"MFCC |tfio - load_audio|: median {np.median(mfcc_diff):.3f}, max {mfcc_diff.max():.2f}")
    assert np.median(mfcc_diff) < 1.0


def test_causal_layer_matches_librosa_and_frames_end_at_their_hop(commands_speech):
    """framing="causal": left padding only, no per-utterance floor; N // hop frames; the layer matches librosa."""
    params = MFCCParams(framing="causal")
    expected = np.stack([librosa_mfcc(x, params) for x in commands_speech[:6]])
    assert expected.shape == (6, 100, 20) and params.num_frames(16000) == 100
    got = MFCC.from_params(params)(commands_speech[:6]).numpy()
    np.testing.assert_allclose(got, expected, atol=MFCC_ATOL, rtol=0)
    # a frame depends on its own samples only: the frames of the first half-second are those of the whole second,
    # and changing the second half of the audio leaves them alone (a centred frame would see half an FFT ahead)
    first = librosa_mfcc(commands_speech[0][:8000], params)
    np.testing.assert_array_equal(first, expected[0][:50])
    changed = commands_speech[0].copy()
    changed[8000:] = commands_speech[1][8000:]
    np.testing.assert_array_equal(librosa_mfcc(changed, params)[:50], expected[0][:50])
    assert not np.array_equal(librosa_mfcc(changed, MFCCParams())[:50], librosa_mfcc(commands_speech[0], MFCCParams())[:50])


def test_causal_frame_count_and_config_key():
    causal = MFCCParams.from_config(PreprocessConfig(mfcc_framing="causal"))
    assert causal.causal and causal.padding == (352, 0)
    for n in (160, 1600, 16000, 16159, 16160):
        assert causal.num_frames(n) == n // 160 == librosa_mfcc(np.zeros(n, np.float32), causal).shape[0]
    assert causal.num_frames(100) == 0
