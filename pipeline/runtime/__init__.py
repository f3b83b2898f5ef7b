"""Running a trained or exported model on one decoded clip: decoding, Keras and TFLite classifiers, loading a run.

Stages (evaluate, predict, the export's parity check) use these building blocks; nothing here imports a stage.
"""
