"""Multi-process training from a recipe: `num_processes` / `accelerate_config` re-run `train` under `accelerate launch`.

`dpo-plugin train --config r.yaml --num_processes 2` is the same as
`accelerate launch --multi_gpu --num_processes 2 -m dpo_plugin.cli train --config r.yaml`, as TRL's own CLI does it.
Running under `accelerate launch` (or `torchrun`) directly works too; then these keys are ignored.
"""

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.config_files import check_recipe_yaml
from ..utils.errors import ConfigError, one_line
from ..utils.validation import check, check_fields, integer_at_least

logger = logging.getLogger("dpo_plugin")

# The named accelerate configs ship inside the package, so a wheel install finds them too.
ACCELERATE_CONFIG_DIR = Path(__file__).resolve().parent / "accelerate"
# The signals torch's elastic launcher relays to the processes it started (SIGTERM/SIGINT stop them with a checkpoint).
RELAYED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# A launched process that stopped on an error a user can fix (it printed it) exits with this, as the CLI does.
USER_ERROR_EXIT_CODE = 2
# Set in the launched processes, so they train instead of launching again.
LAUNCHED_ENV = "DPO_PLUGIN_LAUNCHED"


@dataclass
class LaunchArguments:
    """How many processes `dpo-plugin train` runs, and with which accelerate configuration."""

    num_processes: int | None = field(
        default=None,
        metadata={
            "help": "Train with this many processes (data parallel: each takes per_device_train_batch_size pairs "
            "per step). On GPUs one per GPU; on a CPU-only machine they share the cores (gloo). Unset: one process, "
            "or the accelerate_config's number."
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "An accelerate config file, or the name of one the plugin ships (ddp, fsdp, zero2, zero3; in "
            "dpo_plugin/training/accelerate/) or TRL ships (multi_gpu, single_gpu, fsdp1, fsdp2, zero1, zero2, "
            "zero3; the plugin's win where both have a name): the distributed engine to train with. See "
            "docs/scaling.md."
        },
    )

    # `accelerate launch` flags a recipe sets beyond these two (`main_process_port: 29501`, ...), as `trl dpo`
    # passes every key its dataclasses do not know on to `accelerate launch`; set by `parse_recipe` (not a field).
    launcher_flags = ()

    def __post_init__(self):
        check(self, {"num_processes": integer_at_least(1)})
        if self.accelerate_config is not None:
            self.accelerate_config = str(resolve_accelerate_config(self.accelerate_config))
            check_accelerate_config(Path(self.accelerate_config))

    @property
    def wants_launch(self) -> bool:
        """Whether this `train` should re-run itself under `accelerate launch` (not when it already runs under it)."""
        already_launched = LAUNCHED_ENV in os.environ or "LOCAL_RANK" in os.environ
        asked = self.accelerate_config is not None or (self.num_processes or 1) > 1 or bool(self.launcher_flags)
        return asked and not already_launched


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A path to an existing file, or the name (with or without `.yaml`) of a config the plugin ships, or else of one
    TRL ships (`multi_gpu`, `single_gpu`, `fsdp1`, `fsdp2`, `zero1`, ...: what `trl dpo --accelerate_config` takes)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = f"{path.name.removesuffix('.yaml')}.yaml"
    for folder in (ACCELERATE_CONFIG_DIR, trl_accelerate_configs()):
        if folder is not None and (folder / name).is_file():
            return folder / name
    ours = sorted(p.stem for p in ACCELERATE_CONFIG_DIR.glob("*.yaml"))
    trls = sorted(p.stem for p in trl_accelerate_configs().glob("*.yaml")) if trl_accelerate_configs() else []
    raise ConfigError(
        f"accelerate_config {name_or_path!r} is neither a file nor a shipped config: the plugin ships "
        f"{', '.join(ours) or f'none ({ACCELERATE_CONFIG_DIR} is missing)'}; TRL ships {', '.join(trls) or 'none'}."
    )


def check_accelerate_config(path: Path) -> None:
    """A `ConfigError` naming the file and the key, before anything launches, for an accelerate config that is not a
    YAML mapping or whose counts (the `ClusterConfig` fields declared `int`: num_processes, num_machines,
    machine_rank, main_process_port) are not integers: accelerate's own errors come from deep inside `accelerate
    launch`. Other declared types are not enforced: accelerate writes `downcast_bf16: 'no'` into a field it
    declares `bool`."""
    import typing

    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    check_recipe_yaml(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"accelerate_config {path} is not valid YAML: {one_line(error)}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"accelerate_config {path} must be a mapping of accelerate config keys; got {values!r}.")
    hints = typing.get_type_hints(ClusterConfig)
    counts = {key: value for key, value in values.items() if hints.get(key) in (int, int | None)}
    check_fields(counts, ClusterConfig, f"accelerate_config {path}")


def trl_accelerate_configs() -> Path | None:
    """The folder of accelerate configs the installed TRL ships, or None."""
    from importlib import resources

    try:
        folder = Path(str(resources.files("trl").joinpath("accelerate_configs")))
    except ModuleNotFoundError:
        return None
    return folder if folder.is_dir() else None


def launch_arguments(launch: LaunchArguments, mixed_precision: str) -> list[str]:
    """`accelerate launch` flags for `launch`. The recipe's precision (`bf16`/`fp16`: `mixed_precision`) wins over the
    config file's. Without a config file, several processes run through torchrun (accelerate's `--multi_gpu`
    launcher, which on a CPU-only machine, with the trainer's `use_cpu`, trains on gloo)."""
    flags = ["--mixed_precision", mixed_precision]
    if launch.num_processes is not None:
        flags += ["--num_processes", str(launch.num_processes)]
    if launch.accelerate_config is not None:
        return ["--config_file", launch.accelerate_config, *flags, *launch.launcher_flags]
    return ["--multi_gpu", *flags, "--num_machines", "1", "--dynamo_backend", "no", *launch.launcher_flags]


def is_launcher_option(key: str) -> bool:
    """Whether `accelerate launch` takes `--key` (`num_machines`, `main_process_port`, `mixed_precision`, ...)."""
    from accelerate.commands.launch import launch_command_parser

    return f"--{key}" in launch_command_parser()._option_string_actions


@contextlib.contextmanager
def process_group_ended():
    """A launched process ends its process group itself: on the way out, every process waits for the others when the
    block finished normally, then `destroy_process_group` runs (on any exit). A gloo group left to interpreter
    shutdown can abort the process (SIGABRT, seen now and then on a run that had finished its work): its worker
    threads still hold tensors whose release needs the GIL while the interpreter is being torn down. No-op when no
    group was started (one process)."""
    import torch.distributed as dist

    finished = False
    try:
        yield
        finished = True
    finally:
        if dist.is_available() and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def launch_training(argv: list[str], launch: LaunchArguments, mixed_precision: str) -> None:
    """Run `dpo-plugin train <argv>` in `launch.num_processes` processes under `accelerate launch`; returns when all
    have finished, raises when one failed, and exits with 128 + the signal when SIGTERM/SIGINT stopped them."""
    from accelerate.commands.launch import launch_command, launch_command_parser  # imported here: it loads torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    flags = launch_arguments(launch, mixed_precision)
    logger.info("Launching: accelerate launch %s -m dpo_plugin.cli train %s", " ".join(flags), " ".join(argv))
    os.environ[LAUNCHED_ENV] = "1"
    handlers = {signum: signal.getsignal(signum) for signum in RELAYED_SIGNALS}
    try:
        launch_command(launch_command_parser().parse_args([*flags, "-m", "dpo_plugin.cli", "train", *argv]))
    except SignalException as error:  # the launcher was signalled and relayed it: the processes saved and stopped
        sys.exit(128 + error.sigval)
    except ChildFailedError as error:
        exit_codes = {failure.exitcode for failure in error.failures.values()}
        if exit_codes <= {128 + signum for signum in (signal.SIGTERM, signal.SIGINT)}:
            sys.exit(max(exit_codes))  # every process was signalled, saved a checkpoint and said how to resume
        if USER_ERROR_EXIT_CODE in exit_codes and exit_codes <= {USER_ERROR_EXIT_CODE, -signal.SIGTERM}:
            sys.exit(USER_ERROR_EXIT_CODE)  # a process printed an error a user can fix; the launcher stopped the rest
        raise
    finally:
        del os.environ[LAUNCHED_ENV]
        for signum, handler in handlers.items():  # torch's launcher leaves its own installed
            signal.signal(signum, handler)
