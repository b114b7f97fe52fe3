"""The `dpo-plugin` console script: `train`, `online`, `eval`, `ppo`, `compare`, `sweep`, `bench` (each `--config
recipe.yaml [--key value ...]`), `assets`.

Each command's module is imported only when that command runs, so `dpo-plugin --help` answers at once. Recipes are
TRL-style YAML read with TRL's own parser, so any key can be overridden on the command line; `train` runs unchanged
under `accelerate launch -m dpo_plugin.cli train ...`, or launches itself when the recipe sets `num_processes` /
`accelerate_config`. `--verbose` (or `DPO_PLUGIN_VERBOSE=1`) shows the warnings hidden by default.

Errors a user causes (a bad key or value, a missing file, unreadable data, a model folder without weights, a run
that diverged) end in one line, `dpo-plugin <command>: error: <message>`, and exit code 2; a bug shows its traceback
(exit 1), as does every error with `--debug` (or `DPO_PLUGIN_DEBUG=1`). Ctrl-C exits with 130; SIGTERM during
training saves a checkpoint and exits with 143.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from jinja2 import TemplateError

from ..utils.errors import UserError
from ..utils.quiet import VERBOSE_ENV, quiet_library_warnings

# command -> "module:function" that runs it with the command's arguments
COMMANDS = {
    "train": "dpo_plugin.cli.train:train",
    "eval": "dpo_plugin.cli.evaluate:evaluate",
    "online": "dpo_plugin.cli.online:online",
    "ppo": "dpo_plugin.cli.ppo:ppo",
    "compare": "dpo_plugin.experiments.comparison.command:compare",
    "sweep": "dpo_plugin.experiments.sweep.command:sweep",
    "bench": "dpo_plugin.experiments.bench:bench",
    "assets": "dpo_plugin.cli.assets:assets",
}
USAGE = """usage: dpo-plugin {train,online,eval,ppo,compare,sweep,bench,assets} [--config recipe.yaml] [--key value ...]

  dpo-plugin train --config recipes/quickstart.yaml      align a model on preference pairs (DPO, IPO, TDPO, ...)
  dpo-plugin online --config recipes/online_dpo.yaml     on-policy rounds: sample, rank by a reward, train
  dpo-plugin eval --config recipes/eval.yaml             held-out accuracy and samples through the environments
  dpo-plugin ppo --config recipes/compare/ppo.yaml       PPO against a reward model (the RLHF baseline)
  dpo-plugin compare --config recipes/compare_dpo_ppo.yaml   the DPO paper's comparison, end to end
  dpo-plugin sweep --config recipes/experiments/online_vs_offline.yaml [--max_minutes M] [--report]
                                                         a grid of cells, each kept as it finishes
  dpo-plugin bench {speed,memory,heads,kernels} --config recipes/quickstart.yaml   against TRL's DPOTrainer
  dpo-plugin bench sampling --config recipes/online_dpo.yaml   the on-policy sampler against today's
  dpo-plugin bench online --config recipes/online_sentiment.yaml   on-policy rounds against TRL's OnlineDPOTrainer
  dpo-plugin assets                                      fetch the offline model and data into the cache

`dpo-plugin <command> --help` lists a command's keys. --verbose (or DPO_PLUGIN_VERBOSE=1) shows library warnings;
--debug (or DPO_PLUGIN_DEBUG=1) shows the traceback of every error."""
DEBUG_ENV = "DPO_PLUGIN_DEBUG"
USAGE_ERROR, INTERRUPTED = 2, 130


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    for flag, variable in (("--verbose", VERBOSE_ENV), ("--debug", DEBUG_ENV)):
        if flag in argv:
            argv = [arg for arg in argv if arg != flag]
            os.environ[variable] = "1"  # processes `train` launches inherit it
    if not argv or argv[0] not in COMMANDS:
        print(USAGE)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else USAGE_ERROR)
    quiet_library_warnings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    command, (module, function) = argv[0], COMMANDS[argv[0]].split(":")
    try:
        getattr(importlib.import_module(module), function)(argv[1:])
    except KeyboardInterrupt:
        print(f"dpo-plugin {command}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except (UserError, OSError, TemplateError) as error:  # a bug, any other exception, shows its traceback
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"dpo-plugin {command}: error: {user_message(error)}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def user_message(error: BaseException) -> str:
    """What the user reads: the message, with a missing file's path (an `OSError` names it apart from its text), or
    what a chat template that failed (refused by the sandbox, malformed) needs."""
    if isinstance(error, TemplateError):
        return (
            f"the tokenizer's chat template failed ({type(error).__name__}: {error}): fix the template "
            "(chat_template.jinja or tokenizer_config.json in the model folder), or use string rows."
        )
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
        return f"{error.strerror or error}: {error.filename}"
    return str(error)


if __name__ == "__main__":
    main()
