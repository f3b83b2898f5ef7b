"""actrec: recognise actions in video clips and spoken commands in audio with RNNs; export to TFLite.

The notebook-facing API; each stage function is the one the `actrec` CLI calls:

    load_config(path, overrides) -> Config
    preprocess(config, run_dir)  -> dict (features/index.json)
    train(config, run_dir)       -> dict (validation metrics)
    evaluate(run_dir, split)     -> dict (eval/<name>/metrics.json: top-1, per-class, calibration)
    predict(run_dir, paths)      -> list of dicts (top-k labels per file)
    export(run_dir, formats)     -> dict (parity.json: agreement, accuracy, latency per format)
"""

from pipeline.config import Config, load_config
from pipeline.errors import UserError

# Imported eagerly so these names are the functions, not the submodules of the same name;
# none of them imports TensorFlow at module level (worker processes import this package).
from pipeline.demo import demo  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.export import export  # noqa: E402
from pipeline.predict import predict  # noqa: E402
from pipeline.preprocess import preprocess  # noqa: E402
from pipeline.train import train  # noqa: E402

__all__ = ["Config", "UserError", "demo", "evaluate", "export", "load_config", "predict", "preprocess", "train"]
