"""The `dpo-plugin` console script: `train`, `eval`, `ppo`, `compare`, `bench` (each `--config recipe.yaml
[--key value ...]`), `assets`.

Each command's module is imported only when that command runs, so `dpo-plugin --help` answers at once. Recipes are
TRL-style YAML read with TRL's own parser, so any key can be overridden on the command line; `train` runs unchanged
under `accelerate launch -m dpo_plugin.cli train ...`, or launches itself when the recipe sets `num_processes` /
`accelerate_config`. `--verbose` (or `DPO_PLUGIN_VERBOSE=1`) shows the warnings hidden by default.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import warnings

# command -> "module:function" that runs it with the command's arguments
COMMANDS = {
    "train": "dpo_plugin.cli.train:train",
    "eval": "dpo_plugin.cli.evaluate:evaluate",
    "ppo": "dpo_plugin.cli.ppo:ppo",
    "compare": "dpo_plugin.experiments.comparison.command:compare",
    "bench": "dpo_plugin.experiments.bench:bench",
    "assets": "dpo_plugin.cli.assets:assets",
}
USAGE = """usage: dpo-plugin {train,eval,ppo,compare,bench,assets} [--config recipe.yaml] [--key value ...] [--verbose]

  dpo-plugin train --config recipes/quickstart.yaml      align a model on preference pairs (DPO, IPO, TDPO, ...)
  dpo-plugin eval --config recipes/eval.yaml             held-out accuracy and samples through the environments
  dpo-plugin ppo --config recipes/compare/ppo.yaml       PPO against a reward model (the RLHF baseline)
  dpo-plugin compare --config recipes/compare_dpo_ppo.yaml   the DPO paper's comparison, end to end
  dpo-plugin bench {speed,memory} --config recipes/quickstart.yaml   measured against TRL's DPOTrainer
  dpo-plugin assets                                      fetch the offline model and data into the cache

`dpo-plugin <command> --help` lists a command's keys. --verbose (or DPO_PLUGIN_VERBOSE=1) shows library warnings."""
VERBOSE_ENV = "DPO_PLUGIN_VERBOSE"

# Warnings raised inside TRL, transformers and bitsandbytes that a user of this command cannot act on, by exact
# message: TRL's configs default the deprecated `gradient_checkpointing` and TRL reads `is_gradient_checkpointing`;
# bitsandbytes' CPU backend asks for the `kernels` package, which fetches kernels from a hub at run time.
QUIET_WARNINGS = (
    "`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing` instead.",
    "`gradient_checkpointing_kwargs` is deprecated and will be removed in v6. Use `activation_checkpointing_kwargs` "
    "instead.",
    "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead.",
)
QUIET_LOG_RECORDS = {"bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        argv = [arg for arg in argv if arg != "--verbose"]
        os.environ[VERBOSE_ENV] = "1"  # processes `train` launches inherit it
    if not argv or argv[0] not in COMMANDS:
        print(USAGE)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    if os.environ.get(VERBOSE_ENV) != "1":
        quiet_library_warnings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    module, function = COMMANDS[argv[0]].split(":")
    getattr(importlib.import_module(module), function)(argv[1:])


def quiet_library_warnings() -> None:
    """Hide `QUIET_WARNINGS` and `QUIET_LOG_RECORDS`, and nothing else, for the rest of this process."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)
    for logger_name, prefix in QUIET_LOG_RECORDS.items():
        logging.getLogger(logger_name).addFilter(
            lambda record, prefix=prefix: not record.getMessage().startswith(prefix)
        )


if __name__ == "__main__":
    main()
