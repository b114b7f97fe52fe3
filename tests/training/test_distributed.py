"""Multi-process training: two CPU processes on gloo (DDP, FSDP) log the per-step losses and metrics of one process with
the same global batch; the shipped accelerate configs load; bad launch keys are refused."""

import contextlib
import signal
import sys

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from helpers import assert_only_complete_checkpoints, logged_steps, make_pairs, save_checkpoint, tiny_run, write_splits

from dpo_plugin.cli import main
from dpo_plugin.training.launch import (
    ACCELERATE_CONFIG_DIR,
    RELAYED_SIGNALS,
    LaunchArguments,
    launch_arguments,
    process_group_ended,
)

COMPARED_METRICS = ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/rejected", "num_tokens")


@pytest.mark.parametrize("loss_type", ["dpo", "tdpo2"])
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, loss_type, capfd):
    """One process with 4 pairs per step against two with 2 each: DDP through `num_processes`, and FSDP through the
    shipped `fsdp` config (its sharded LM head gathered for the chunked head, with no fallback to full logits). Both
    save checkpoints every 2 steps (staged by the main process, written by both)."""
    checkpoint = save_checkpoint(tmp_path / "tiny-model")
    data = write_splits(tmp_path / "pairs", make_pairs(16), make_pairs(4))
    common = ["--loss_type", loss_type, "--learning_rate", "0.01", "--max_steps", "4"]
    main(tiny_run(checkpoint, data, tmp_path / "one", *common, "--per_device_train_batch_size", "4"))
    one_process = logged_steps(tmp_path / "one")
    assert one_process[-1]["loss"] < 0.69  # it trained, so equal curves mean equal updates
    two = [*common, "--per_device_train_batch_size", "2", "--num_processes", "2", "--save_strategy", "steps"]
    handlers = [signal.getsignal(signum) for signum in RELAYED_SIGNALS]
    for engine in ("ddp", "fsdp"):
        run = tmp_path / engine
        extra = ["--save_steps", "2"] + (["--accelerate_config", "fsdp"] if engine == "fsdp" else [])
        capfd.readouterr()
        main(tiny_run(checkpoint, data, run, *two, *extra))
        log = capfd.readouterr().err
        assert "Reference model:" in log and "falls back to full logits" not in log, engine  # the log is seen
        two_processes = logged_steps(run)
        assert [entry["step"] for entry in two_processes] == [1, 2, 3, 4]
        assert two_processes[0]["epoch"] == one_process[0]["epoch"] == 0.25  # 4 pairs per step in both runs
        for single, double in zip(one_process, two_processes, strict=True):
            for key in COMPARED_METRICS:
                assert double[key] == pytest.approx(single[key], abs=1e-5, rel=0), (engine, single["step"], key)
        assert_only_complete_checkpoints(run, [2, 4])
    assert [signal.getsignal(signum) for signum in RELAYED_SIGNALS] == handlers  # the launcher's are removed


@pytest.mark.parametrize("loss_type", ["dpo", "tdpo2"])
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_on_two_cpu_processes_matches_one_process(tmp_path, loss_type, stage):
    """DeepSpeed's CPU accelerator with the shipped ZeRO configs: two processes with 2 pairs each log what one
    process with 4 logs, and save complete checkpoints. Under ZeRO-3 the reference is reloaded from the policy's
    checkpoint (a copy of a partitioned model would hold empty shards)."""
    pytest.importorskip("deepspeed", reason="deepspeed is an optional extra: pip install '.[deepspeed]'")
    checkpoint = save_checkpoint(tmp_path / "tiny-model")
    data = write_splits(tmp_path / "pairs", make_pairs(16), make_pairs(4))
    common = ["--loss_type", loss_type, "--learning_rate", "0.01", "--max_steps", "4"]
    main(tiny_run(checkpoint, data, tmp_path / "one", *common, "--per_device_train_batch_size", "4"))
    two = [*common, "--per_device_train_batch_size", "2", "--num_processes", "2", "--accelerate_config", stage]
    main(tiny_run(checkpoint, data, tmp_path / stage, *two, "--save_strategy", "steps", "--save_steps", "2"))
    for single, double in zip(logged_steps(tmp_path / "one"), logged_steps(tmp_path / stage), strict=True):
        for key in COMPARED_METRICS:
            assert double[key] == pytest.approx(single[key], abs=1e-5, rel=0), (stage, single["step"], key)
    assert sorted(p.name for p in (tmp_path / stage).glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / stage / "model.safetensors").is_file()
    resumed = [*two, "--max_steps", "5", "--resume_from_checkpoint", "last"]  # the optimizer is in global_step4/
    main(tiny_run(checkpoint, data, tmp_path / stage, *resumed))
    assert logged_steps(tmp_path / stage)[-1]["step"] == 5


@pytest.mark.parametrize("failing", [False, True])
def test_a_launched_process_ends_its_process_group_on_any_exit(tmp_path, failing):
    """The group is destroyed before interpreter shutdown (where gloo's threads can abort the process), after a
    barrier when the block finished, without one when it failed (the other processes may be gone)."""
    torch_distributed = pytest.importorskip("torch.distributed")
    torch_distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    with contextlib.suppress(SystemExit), process_group_ended():
        torch_distributed.all_reduce(torch.ones(2))
        if failing:
            sys.exit(143)
    assert not torch_distributed.is_initialized()
    with process_group_ended():  # no group: nothing to do
        pass


@pytest.mark.parametrize("path", sorted(ACCELERATE_CONFIG_DIR.glob("*.yaml")), ids=lambda path: path.stem)
def test_shipped_accelerate_configs_load_and_resolve_by_name(path):
    config = load_config_from_file(str(path))
    assert config.num_machines == 1 and config.distributed_type.value in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    assert LaunchArguments(accelerate_config=path.stem).accelerate_config == str(path)


def test_launch_arguments():
    assert LaunchArguments(num_processes=2).wants_launch
    assert not LaunchArguments(num_processes=1).wants_launch
    flags = launch_arguments(LaunchArguments(num_processes=2), "no")
    assert flags[:5] == ["--multi_gpu", "--mixed_precision", "no", "--num_processes", "2"]
    flags = launch_arguments(LaunchArguments(num_processes=4, accelerate_config="zero2"), "bf16")
    assert flags[0] == "--config_file" and flags[1].endswith("zero2.yaml")
    assert flags[2:] == ["--mixed_precision", "bf16", "--num_processes", "4"]
    with pytest.raises(ValueError, match="neither a file nor a shipped config: the plugin ships ddp"):
        LaunchArguments(accelerate_config="zero9")
    with pytest.raises(ValueError, match="num_processes must be an integer >= 1"):
        LaunchArguments(num_processes=0)


def test_already_launched_processes_do_not_launch_again(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not LaunchArguments(num_processes=2).wants_launch
