"""Command-line tools: `phenaki-sample`, `phenaki-data`, `phenaki-eval`, `phenaki-web`.

The CLI is the one place that talks to people: clear messages, progress bars and
non-zero exits on bad input. The work itself lives in the library modules; each command
has its own module here, and the sampling options come from `SamplingSettings` (options.py).
"""

from .data import data_main
from .evaluate import eval_main
from .sample import sample_main
from .train import training_command, training_config
from .web import web_main

__all__ = ["data_main", "eval_main", "sample_main", "training_command", "training_config", "web_main"]
