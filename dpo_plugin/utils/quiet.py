"""Quiet by default: the library warnings a user of the command line cannot act on, hidden by exact message, in the
CLI's processes only (never on import of the library)."""

import logging
import os
import re
import warnings

VERBOSE_ENV = "DPO_PLUGIN_VERBOSE"

# Warnings raised inside TRL, transformers and bitsandbytes that a user of this command cannot act on, by exact
# message: TRL's configs default the deprecated `gradient_checkpointing`, and TRL and transformers' Trainer call
# `is_gradient_checkpointing`, `gradient_checkpointing_enable` and `gradient_checkpointing_disable`;
# bitsandbytes' CPU backend asks for the `kernels` package, which fetches kernels from a hub at run time.
QUIET_WARNINGS = (
    "`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing` instead.",
    "`gradient_checkpointing_kwargs` is deprecated and will be removed in v6. Use `activation_checkpointing_kwargs` "
    "instead.",
    "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead.",
    "`gradient_checkpointing_enable` is deprecated and will be removed in v6. Use `activation_checkpointing_enable` "
    "instead.",
    "`gradient_checkpointing_disable` is deprecated and will be removed in v6. Use `activation_checkpointing_disable` "
    "instead.",
)
# DeepSpeed (installed or not, transformers imports it when present) announces the CPU on every import.
QUIET_LOG_RECORDS = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "DeepSpeed": "Setting accelerator to CPU.",
}


def quiet_library_warnings() -> None:
    """Hide `QUIET_WARNINGS` and `QUIET_LOG_RECORDS`, and nothing else, for the rest of this process, unless
    `DPO_PLUGIN_VERBOSE=1` (the CLI's `--verbose`). Processes a command starts run it first (as their pool's
    initializer, before a task's imports load bitsandbytes)."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)
    for logger_name, prefix in QUIET_LOG_RECORDS.items():
        logging.getLogger(logger_name).addFilter(
            lambda record, prefix=prefix: not record.getMessage().startswith(prefix)
        )


def quiet_int8_cast_warning() -> None:
    """bitsandbytes' 8-bit matmul logs "inputs will be cast ... to float16" on every call of every layer: the cast
    is how LLM.int8 works, so the message is dropped once rather than flooding the log."""
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Int8CastFilter) for f in bnb_logger.filters):
        bnb_logger.addFilter(_Int8CastFilter())


class _Int8CastFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "will be cast from" not in record.getMessage()


def library_progress_bars_off() -> None:
    """Hide the progress bars `datasets` and transformers draw while a run is set up (tokenizing, loading weights):
    a benchmark shows one bar per contender turn, `dpo-plugin online` one per round's phase."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
