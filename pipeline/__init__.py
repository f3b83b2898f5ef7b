"""actrec: recognise actions in video clips and spoken commands in audio with RNNs; export to TFLite.

The notebook-facing API; each stage function is the one the `actrec` CLI calls.
"""

from pipeline.config import Config, load_config
from pipeline.errors import UserError

__all__ = ["Config", "UserError", "load_config"]
