"""Deployment building blocks of `actrec export`: a trained run -> the .tflite files an app ships, and their parity.

    graph.py        RUN/model.keras + config -> InferenceGraphs: the deployable Keras graph (raw frames and
                    waveform in, probabilities out), the head alone, and preprocessing.json's contents
    convert.py      the graph -> SavedModel -> TFLite bytes, one child process per batch of formats
    tflite_edit.py  TFLite bytes -> bytes: the post-processing that makes the files small and XNNPACK-safe
    parity.py       each written file vs model.keras on the raw test clips, timed; the acceptance checks

The stage that runs them in that order, and publishes RUN/export/, is pipeline's export stage;
running an exported file is pipeline.runtime.tflite.
"""
