"""Feature extractors: CNN frame encoders (encoders.py) and MFCCs (mfcc.py).

Unlike `pipeline.media`, these modules may use TensorFlow/Keras: every transform
that must also run inside an exported model is written once as a Keras layer and
tested against its numpy/librosa reference.
"""
