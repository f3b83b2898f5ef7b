"""actrec: recognise actions in video clips and spoken commands in audio with RNNs; export to TFLite.

The notebook-facing API; each stage function is the one the `actrec` CLI calls (modules: pipeline.stages.*):

    load_config(path_or_name, overrides) -> Config
    preprocess(config, run_dir)  -> dict (features/index.json)
    train(config, run_dir)       -> dict (validation metrics)
    evaluate(run_dir, split)     -> dict (eval/<name>/metrics.json: top-1, per-class, calibration)
    predict(run_dir, paths)      -> list of dicts (top-k labels per file)
    export(run_dir, formats)     -> dict (parity.json: agreement, accuracy, latency per format)

None of the stage modules imports TensorFlow at module level (worker processes import this package).
"""

from pipeline.config import Config, load_config
from pipeline.errors import UserError
from pipeline.stages.demo import demo
from pipeline.stages.evaluate import evaluate
from pipeline.stages.export import export
from pipeline.stages.predict import predict
from pipeline.stages.preprocess import preprocess
from pipeline.stages.train import train

__all__ = ["Config", "UserError", "demo", "evaluate", "export", "load_config", "predict", "preprocess", "train"]
