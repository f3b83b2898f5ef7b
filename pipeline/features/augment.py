"""Training-time augmentation, in tf.data, of one example at a time (train split only; never validation or test).

    frame features / frames [T, ...]  --temporal_jitter-->  the clip sampled at slightly different moments
    frames uint8 [T, S, S, 3]          --spatial_augment-->  flip, zoom/shift crop, brightness/contrast
    waveform float32 [N]               --cut_word (relabelled _unknown_)-->  a word cut short, as a stream hears it
                                       --time_shift, change_speed, mix_background-->  float32 [N]
                                       (then the MFCC layer: what preprocessing's librosa MFCC computes,
                                       its mel filterbank frequency-warped by warp_filterbank)
    mfcc float32 [F, C]                --spec_augment-->    masked bands of frames and coefficients
    {video arrays, audio arrays}       --drop_modality-->   one modality zeroed, its length 0 (audio-visual runs)

Every function takes the example's `seed` (int64 [2]) and draws with tf.random.stateless_*: what an example gets is
a function of its seed alone, whichever tf.data thread computes it (stateful random ops in a parallel map hand their
draws to whichever element asks first). Training gives each example of each epoch its own seed (features.epochs.with_example_seeds).
"""

from __future__ import annotations


def split_seed(seed, n: int):
    """One seed int [2] -> n independent seeds int64 [n, 2]."""
    import tensorflow as tf

    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n)


def uniform(seed, minval, maxval, dtype="float32", shape=()):
    """A stateless uniform draw in [minval, maxval) of `shape` (for integer dtypes maxval is excluded too)."""
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=dtype)


def temporal_jitter(steps, lengths, seed, max_shift: int = 1):
    """Move each valid step's source index by -1..+1 (clipped to the valid range): [T, ...] -> [T, ...].

    Imitates sampling the clip at slightly different moments without re-decoding it.
    """
    import tensorflow as tf

    t = tf.shape(steps)[0]
    length = tf.maximum(tf.cast(lengths, tf.int32), 1)
    shift = uniform(seed, -max_shift, max_shift + 1, tf.int32, [t])
    source = tf.clip_by_value(tf.range(t) + shift, 0, length - 1)
    source = tf.where(tf.range(t) < length, tf.sort(source), tf.range(t))  # keep order, leave padding alone
    return tf.gather(steps, source)


def spatial_augment(frames, seed, min_crop: float = 0.8, max_brightness: float = 0.15, contrast: tuple = (0.8, 1.25)):
    """One random transform for all frames of a clip, uint8 [T, S, S, 3] -> uint8 [T, S, S, 3]: a horizontal
    flip (actions here read the same mirrored), a crop of min_crop..1 of the side resized back (zoom and
    shift), and brightness/contrast jitter (cameras and lighting)."""
    import tensorflow as tf

    flip, zoom, down, across, gain, shift = tf.unstack(split_seed(seed, 6))
    size = tf.shape(frames)[1]
    x = tf.cast(frames, tf.float32) / 255.0
    x = tf.cond(uniform(flip, 0.0, 1.0) < 0.5, lambda: tf.reverse(x, axis=[2]), lambda: x)
    side = tf.cast(tf.cast(size, tf.float32) * uniform(zoom, min_crop, 1.0), tf.int32)
    top = uniform(down, 0, size - side + 1, tf.int32)
    left = uniform(across, 0, size - side + 1, tf.int32)
    x = tf.image.resize(x[:, top : top + side, left : left + side, :], tf.stack([size, size]))
    mean = tf.reduce_mean(x)
    x = (x - mean) * uniform(gain, *contrast) + mean + uniform(shift, -max_brightness, max_brightness)
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


def drop_modality(example: dict, rate: float, seed) -> dict:
    """DropPathway-style modality dropout on one audio-visual example {input name: tensor}: with probability
    `rate` one modality (video or audio, evenly) arrives as a clip without it would: its arrays zeros and its
    length 0, which the fusion model gates out. The model so learns to classify from either modality alone."""
    import tensorflow as tf

    from pipeline.features.records import MODALITY_FEATURES

    draw = uniform(seed, 0.0, 1.0)
    dropped = {"video": draw < rate / 2, "audio": tf.logical_and(draw >= rate / 2, draw < rate)}
    out = dict(example)
    for modality, names in MODALITY_FEATURES.items():
        for name in names:
            if name in out:
                out[name] = tf.where(dropped[modality], tf.zeros_like(out[name]), out[name])
    return out


def spec_augment(mfcc, seed, time_masks: int, time_width: int, freq_masks: int, freq_width: int):
    """SpecAugment on one MFCC sequence [F, C]: blank random bands of frames and of coefficients.

    A masked value becomes its coefficient's mean over the sequence [1, C], so the in-model normalisation sees no
    outliers: one mean over every coefficient would turn c0 (loudness, on a scale of its own) into a loud burst.
    """
    import tensorflow as tf

    f, c = tf.shape(mfcc)[0], tf.shape(mfcc)[1]
    fill = tf.reduce_mean(mfcc, axis=0, keepdims=True)  # [1, C]
    keep = tf.ones_like(mfcc, dtype=tf.bool)
    draws = iter(tf.unstack(split_seed(seed, 2 * (time_masks + freq_masks) + 1)))  # one spare: unstack needs n >= 1
    for _ in range(time_masks):
        width = uniform(next(draws), 0, time_width + 1, tf.int32)
        start = uniform(next(draws), 0, tf.maximum(f - width, 1), tf.int32)
        band = (tf.range(f) >= start) & (tf.range(f) < start + width)
        keep &= ~band[:, None]
    for _ in range(freq_masks):
        width = uniform(next(draws), 0, freq_width + 1, tf.int32)
        start = uniform(next(draws), 0, tf.maximum(c - width, 1), tf.int32)
        band = (tf.range(c) >= start) & (tf.range(c) < start + width)
        keep &= ~band[None, :]
    return tf.where(keep, mfcc, fill)  # fill [1, C] broadcasts over the frames


def cepstral_shift(mfcc, scale, seed):
    """Another microphone or voice timbre: mfcc [F, C] + one random offset per coefficient, the same in every frame.

    A filter that does not change over time (a microphone, a room's colour, a vocal tract's average shape) adds its
    log spectrum to the sound's, so it adds a constant to each cepstral coefficient: a random offset per coefficient
    is a random smooth equaliser. scale: float32 [C], the largest offset of each coefficient (0 keeps c0, loudness).
    """
    import tensorflow as tf

    return mfcc + uniform(seed, -1.0, 1.0, shape=[1, len(scale)]) * tf.constant(scale, tf.float32)[None]


def warp_filterbank(filterbank, factor):
    """Vocal tract length perturbation (Jaitly and Hinton, 2013): a mel filterbank [K, M] that reads the spectrum
    with its frequency axis scaled by `factor` (a scalar tensor, e.g. uniform in 1 +- train.vtlp): bin k gets the
    power at bin k / factor (linear interpolation; past the top bin, the top bin). factor > 1 moves every formant
    up, as a shorter vocal tract does; the pitch harmonics move with them, the timing does not (change_speed moves
    all three).

    power [B, F, K] @ warp_filterbank(filterbank, a) = (power with its frequency axis scaled by a) @ filterbank.
    """
    import tensorflow as tf

    filterbank = tf.convert_to_tensor(filterbank, tf.float32)
    k = filterbank.shape[0]
    source = tf.minimum(tf.range(k, dtype=tf.float32) / tf.cast(factor, tf.float32), k - 1.0)  # [K]
    # interpolation[i, j]: the weight of bin i in the power read at bin j
    interpolation = tf.nn.relu(1.0 - tf.abs(tf.range(k, dtype=tf.float32)[:, None] - source[None, :]))  # [K, K]
    return tf.matmul(interpolation, filterbank)


def cut_word(waveform, seed, kept: tuple[float, float] = (0.2, 0.8), frame: int = 160, floor_db: float = -30.0):
    """A word as a stream hears it while it is being said: float32 [N] -> [N], the first `kept` share (drawn
    uniformly) of the word, moved to end where the window ends, silence before it.

    The word: from the first to the last `frame`-sample frame within floor_db of the loudest frame's power. A
    streaming model answers after every hop, so most of its windows end inside a word; trained only on whole words
    it hears "ye" of "yellow" as "yes". Training relabels these cut words `_unknown_` (train.cut_words).
    """
    import tensorflow as tf

    n = tf.shape(waveform)[0]
    frames = n // frame
    power = tf.reduce_mean(tf.square(tf.reshape(waveform[: frames * frame], [frames, frame])), axis=1)
    loud = tf.cast(tf.where(power >= tf.reduce_max(power) * 10 ** (floor_db / 10))[:, 0], tf.int32)
    onset, offset = loud[0] * frame, (loud[-1] + 1) * frame
    cut = onset + tf.cast(uniform(seed, *kept) * tf.cast(offset - onset, tf.float32), tf.int32)
    return tf.concat([tf.zeros([n - cut], waveform.dtype), waveform[:cut]], 0)


def time_shift(waveform, max_shift: int, seed):
    """Move the sound by a random -max_shift..+max_shift samples: float32 [N] -> [N], the vacated part silent."""
    import tensorflow as tf

    n = tf.shape(waveform)[0]
    shift = uniform(seed, -max_shift, max_shift + 1, tf.int32)
    padded = tf.pad(waveform, [[max_shift, max_shift]])
    return padded[max_shift - shift : max_shift - shift + n]


def change_speed(waveform, max_change: float, seed):
    """Play the sound a random factor 1 +- max_change faster or slower, pitch and tempo together (a tape run fast or
    slow; other speakers talk faster and higher): float32 [N] -> [N] by linear interpolation, silent past the end."""
    import tensorflow as tf

    n = tf.shape(waveform)[0]
    position = tf.cast(tf.range(n), tf.float32) * uniform(seed, 1 - max_change, 1 + max_change)
    first = tf.minimum(tf.cast(tf.floor(position), tf.int32), n)
    weight = position - tf.floor(position)
    x = tf.concat([waveform, tf.zeros([1], waveform.dtype)], 0)  # index n reads silence
    return tf.gather(x, first) * (1 - weight) + tf.gather(x, tf.minimum(first + 1, n)) * weight


def mix_background(waveform, backgrounds, probability: float, snr_db: tuple[float, float], seed):
    """With `probability`, add one random window of backgrounds float32 [S, N] at a random signal-to-noise ratio
    in snr_db (dB, relative to the clip's mean power): float32 [N] -> [N]."""
    import tensorflow as tf

    backgrounds = tf.convert_to_tensor(backgrounds, tf.float32)
    whether, which, level = tf.unstack(split_seed(seed, 3))

    def mix():
        noise = backgrounds[uniform(which, 0, tf.shape(backgrounds)[0], tf.int32)]
        snr = uniform(level, snr_db[0], snr_db[1])
        signal_power = tf.reduce_mean(tf.square(waveform)) + 1e-10
        noise_power = tf.reduce_mean(tf.square(noise)) + 1e-10
        return waveform + noise * tf.sqrt(signal_power / (noise_power * 10 ** (snr / 10)))

    return tf.cond(uniform(whether, 0.0, 1.0) < probability, mix, lambda: waveform)
