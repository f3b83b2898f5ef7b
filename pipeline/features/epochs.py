"""Training epochs as one tf.data stream in which every epoch is a function of (config seed, epoch number).

    epoch e:  the split's examples --shuffled(order seed of e)--> ... --with_example_seeds(example seed of e)-->
              (x, y, clip_id, seed int64 [2])  (features.augment draws an example's augmentation from its seed)
    epochs(one_epoch, first):  one_epoch(first), one_epoch(first + 1), ... endlessly (fit reads `steps` batches an epoch)

A run resumed at epoch E starts the stream at E and trains on what an uninterrupted run trained on from there: no
order lives in an iterator's state, and no draw comes from a stateful random op (in a parallel map those hand their
draws to whichever element asks first). Only stateless ops draw here: tf.data's shuffle takes a tensor seed inside
flat_map but then ignores it (every epoch the same order) under a global seed, and fails to build under a global seed of 0.
"""

from __future__ import annotations

EPOCH_SEEDS = 1 << 20  # epochs per config seed before two config seeds' epochs could share a seed
ORDER, KINDS, EXAMPLES = 0, 1, 2  # what an epoch's seeds are for


def epoch_seed(seed: int, epoch, purpose: int):
    """The stateless seed int64 [2] of one epoch's `purpose` (ORDER, KINDS or EXAMPLES)."""
    import tensorflow as tf

    return tf.stack([tf.constant(seed, tf.int64) * EPOCH_SEEDS + tf.cast(epoch, tf.int64), tf.constant(purpose, tf.int64)])


def shuffled(ds, window: int, seed):
    """ds in an order drawn from seed (int64 [2]): consecutive windows of `window` examples, each permuted (the whole
    of ds when it is shorter). Window k's permutation is drawn from seed folded with k."""
    import tensorflow as tf

    def permute(k, block):
        n = tf.shape(tf.nest.flatten(block)[0])[0]
        order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.random.experimental.stateless_fold_in(seed, k)))
        return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda v: tf.gather(v, order), block))

    return ds.batch(window).enumerate().flat_map(lambda k, *block: permute(k, block[0] if len(block) == 1 else block))


def with_example_seeds(ds, seed):
    """(x, y, clip_id) examples of one epoch -> (x, y, clip_id, seed int64 [2]): the k-th example's seed is `seed`
    (the epoch's EXAMPLES seed) folded with k."""
    import tensorflow as tf

    return ds.enumerate().map(lambda k, example: (*example, tf.random.experimental.stateless_fold_in(seed, k)))


def epochs(one_epoch, first_epoch: int = 0):
    """one_epoch(epoch int64 scalar tensor) -> that epoch's finite dataset; returns every epoch from first_epoch on."""
    import tensorflow as tf

    return tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(one_epoch)
