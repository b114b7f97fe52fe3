"""Interrupt and resume: a signalled run saves a complete checkpoint and stops; resuming it gives the uninterrupted
run's losses, metrics and weights; a crash while saving leaves the previous checkpoints intact and no partial files."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_only_complete_checkpoints,
    logged_steps,
    make_model,
    make_pairs,
    make_tokenizer,
    save_checkpoint,
    tiny_run,
    write_splits,
)
from transformers import TrainerCallback

from dpo_plugin.cli import main
from dpo_plugin.training.config import PreferenceConfig
from dpo_plugin.training.trainer import PreferenceTrainer
from dpo_plugin.utils.errors import UserError

COMPARED_METRICS = ("loss", "learning_rate", "grad_norm", "rewards/margins", "kl/chosen", "logps/chosen", "num_tokens")


class SignalAtStep(TrainerCallback):
    """Sends `signum` to this process `times` times while optimizer step `step` is running."""

    def __init__(self, step: int, signum: int, times: int = 1):
        self.step, self.signum, self.times = step, signum, times

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def tiny_trainer(output_dir: Path, callbacks=(), **overrides) -> PreferenceTrainer:
    """TDPO2 on a tiny model for 6 steps, a checkpoint every 2, a linearly decaying learning rate; same seed always."""
    tokenizer = make_tokenizer()
    settings = dict(
        output_dir=str(output_dir),
        loss_type="tdpo2",
        per_device_train_batch_size=2,
        max_steps=6,
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_steps=2,
        max_length=64,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        seed=3,
    )
    settings.update(overrides)
    return PreferenceTrainer(
        model=make_model(len(tokenizer)),
        args=PreferenceConfig(**settings),
        train_dataset=make_pairs(16),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def training_logs(trainer) -> dict[int, dict]:
    return {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalled_run_saves_a_checkpoint_and_resumes_exactly(tmp_path, signum):
    handlers_before = signal.getsignal(signum)
    uninterrupted = tiny_trainer(tmp_path / "uninterrupted")
    uninterrupted.train()

    output_dir = tmp_path / "interrupted"
    stale = output_dir / ".staging-checkpoint-2" / "checkpoint-2"  # what a SIGKILL mid-save would leave
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    interrupted = tiny_trainer(output_dir, callbacks=[SignalAtStep(3, signum)])
    interrupted.train()
    assert interrupted.interrupted_by == signum and interrupted.state.global_step == 3
    assert signal.getsignal(signum) is handlers_before
    assert_only_complete_checkpoints(output_dir, [2, 3])

    resumed = tiny_trainer(output_dir)
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-3"))
    assert resumed.interrupted_by is None
    expected, got = training_logs(uninterrupted), training_logs(resumed)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        for key in COMPARED_METRICS:
            assert got[step][key] == pytest.approx(expected[step][key], abs=1e-6, rel=0), (step, key)
    for (name, want), have in zip(uninterrupted.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(have, want, atol=1e-6, rtol=0, msg=name)


def test_second_ctrl_c_aborts_at_once_and_keeps_the_last_checkpoint(tmp_path):
    handler_before = signal.getsignal(signal.SIGINT)
    trainer = tiny_trainer(tmp_path / "run", callbacks=[SignalAtStep(3, signal.SIGINT, times=2)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert_only_complete_checkpoints(tmp_path / "run", [2])


def test_crash_while_saving_leaves_earlier_checkpoints_and_no_partial_folder(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path / "run")
    save_rng_state = trainer._save_rng_state

    def crash(output_dir):
        if output_dir.endswith("checkpoint-4"):
            raise OSError("Input/output error")
        save_rng_state(output_dir)

    monkeypatch.setattr(trainer, "_save_rng_state", crash)
    with pytest.raises(OSError, match="Input/output error"):
        trainer.train()
    assert_only_complete_checkpoints(tmp_path / "run", [2])


# What a full disk raises: an OSError with ENOSPC (safetensors, json), or torch's stream writer's RuntimeError
DISK_FULL = {
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
    "torch.save": RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 0 vs 64: file write failed"),
}


@pytest.mark.parametrize("raised", DISK_FULL.values(), ids=DISK_FULL.keys())
def test_a_full_disk_while_checkpointing_is_one_line_naming_the_last_complete_checkpoint(tmp_path, capsys, raised):
    data = write_splits(tmp_path / "data", make_pairs(16), make_pairs(4))
    run = tmp_path / "run"
    save = torch.save

    def full_at_step_4(obj, path, *args, **kwargs):  # a disk that fills up during the second checkpoint
        if "checkpoint-4" in str(path):
            raise raised
        return save(obj, path, *args, **kwargs)

    torch.save = full_at_step_4
    try:
        with pytest.raises(SystemExit) as exited:
            main(
                tiny_run(
                    save_checkpoint(tmp_path / "tiny"),
                    data,
                    run,
                    "--max_steps",
                    "6",
                    "--save_steps",
                    "2",
                    "--save_strategy",
                    "steps",
                )
            )
    finally:
        torch.save = save
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2
    assert error == (
        f"dpo-plugin train: error: The disk is full: checkpoint-4 could not be written to {run} (its partial files "
        f"are removed); the last complete checkpoint is {run / 'checkpoint-2'}. Free space, then run the same "
        "command with --resume_from_checkpoint last."
    )
    assert_only_complete_checkpoints(run, [2])
    assert not (run / "model.safetensors").exists() and not (run / "metrics.json").exists()


def test_a_full_disk_while_saving_the_final_model_is_one_line_and_leaves_no_model(tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils

    data = write_splits(tmp_path / "data", make_pairs(16), make_pairs(4))
    run = tmp_path / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    checkpoint = save_checkpoint(tmp_path / "tiny")
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    with pytest.raises(SystemExit) as exited:
        main(tiny_run(checkpoint, data, run, "--max_steps", "2"))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and error.startswith(
        f"dpo-plugin train: error: The disk is full: the final model could not be written to {run} (its partial "
        "files are removed); no checkpoint was saved before it."
    )
    assert not (run / "model.safetensors").exists() and not (run / "metrics.json").exists()
    assert not list(run.parent.glob(".staging-*"))


def test_no_handlers_are_installed_when_save_on_interrupt_is_off(tmp_path):
    seen = []

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(signal.getsignal(signal.SIGTERM))

    tiny_trainer(tmp_path / "run", callbacks=[Probe()], save_on_interrupt=False, max_steps=1).train()
    assert seen == [signal.SIG_DFL]


@pytest.mark.parametrize("processes", [1, 2])
def test_dpo_plugin_train_stopped_by_sigterm_exits_143_and_resumes_exactly(tmp_path, processes):
    """The real command in a child process (two gloo processes under torchrun, which relays the signal, or one):
    SIGTERM once its 2nd checkpoint exists; then `--resume_from_checkpoint last` for two more steps, against a run
    never stopped (constant learning rate, so the step count does not change the schedule)."""
    checkpoint = save_checkpoint(tmp_path / "tiny-model")
    data = write_splits(tmp_path / "pairs", make_pairs(12), make_pairs(4))
    run = tmp_path / "run"
    settings = ["--save_strategy", "steps", "--save_steps", "3", "--lr_scheduler_type", "constant"]
    settings += ["--learning_rate", "0.01", "--num_processes", str(processes)]
    settings += ["--per_device_train_batch_size", str(4 // processes)]
    argv = tiny_run(checkpoint, data, run, *settings)
    child = subprocess.Popen(
        [sys.executable, "-m", "dpo_plugin.cli", *argv, "--max_steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (run / "checkpoint-6").is_dir() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, output
    assert "Stopped by SIGTERM" in output and "--resume_from_checkpoint" in output
    steps = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert steps[:2] == [3, 6]
    assert_only_complete_checkpoints(run, steps)
    assert len(list((run / f"checkpoint-{steps[-1]}").glob("rng_state*.pth"))) == processes
    assert not (run / "metrics.json").exists() and not (run / "model.safetensors").exists()

    total = str(steps[-1] + 2)
    main([*argv, "--resume_from_checkpoint", "last", "--max_steps", total])
    never_stopped = tmp_path / "never-stopped"
    main([*tiny_run(checkpoint, data, never_stopped, *settings), "--max_steps", total])
    resumed, expected = logged_steps(run), logged_steps(never_stopped)
    assert [entry["step"] for entry in resumed] == list(range(1, int(total) + 1))
    for want, got in zip(expected, resumed, strict=True):
        for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "num_tokens"):
            assert got[key] == pytest.approx(want[key], abs=1e-6, rel=0), (want["step"], key)
    assert (run / "model.safetensors").is_file()


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "dpo_plugin_state.json"])
def test_resuming_from_a_checkpoint_that_lacks_a_file_is_refused_unless_partial_resume_is_asked(
    tmp_path, missing, caplog
):
    run = tmp_path / "run"
    tiny_trainer(run, max_steps=2).train()
    checkpoint = run / "checkpoint-2"
    (checkpoint / missing).unlink()
    with pytest.raises(ValueError, match=f"lacks {missing}.*allow_partial_resume"):
        PreferenceConfig(output_dir=str(run), resume_from_checkpoint=str(checkpoint), use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match=f"lacks {missing}"):  # the Python API is checked too
        tiny_trainer(run, max_steps=4).train(resume_from_checkpoint=str(checkpoint))
    with caplog.at_level("WARNING", logger="dpo_plugin"):
        resumed = tiny_trainer(run, max_steps=4, allow_partial_resume=True)
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4 and f"without {missing}" in caplog.text


def test_resuming_from_truncated_weights_is_refused(tmp_path):
    run = tmp_path / "run"
    tiny_trainer(run, max_steps=2).train()
    weights = run / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(ValueError, match="model.safetensors is truncated"):
        tiny_trainer(run, max_steps=4).train(resume_from_checkpoint="last")


@pytest.mark.parametrize(
    "change, named",
    [
        ({"loss_type": "dpo", "beta": 0.3}, ['loss_type: ["tdpo2"] there, ["dpo"] here', "beta: 0.1 there, 0.3 here"]),
        ({"per_device_train_batch_size": 4}, ["per_device_train_batch_size: 2 there, 4 here"]),
    ],
    ids=["objective", "batch-geometry"],
)
def test_resuming_with_another_objective_or_batch_is_refused_naming_the_keys(change, named, tmp_path):
    run = tmp_path / "run"
    tiny_trainer(run, max_steps=2).train()
    with pytest.raises(UserError, match="is a checkpoint of another run") as refused:
        tiny_trainer(run, max_steps=4, **change).train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert all(part in str(refused.value) for part in named), str(refused.value)
    assert sorted(path.name for path in run.glob("checkpoint-*")) == ["checkpoint-2"]


def test_resuming_with_other_data_is_refused_and_resume_allow_changes_lets_named_keys_change(tmp_path):
    run = tmp_path / "run"
    tiny_trainer(run, max_steps=2).train()
    other = tiny_trainer(run, max_steps=4)
    other.train_dataset = other.train_dataset.select(range(8))
    with pytest.raises(UserError, match="train_data: "):
        other.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    resumed = tiny_trainer(run, max_steps=4, learning_rate=5e-3, resume_allow_changes=["learning_rate"])
    resumed.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert resumed.state.global_step == 4


def test_resuming_a_finished_run_trains_nothing_and_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    tiny_trainer(run, max_steps=2).train()
    weights = (run / "checkpoint-2" / "model.safetensors").read_bytes()
    before = sorted(path.name for path in run.iterdir())
    with caplog.at_level("INFO", logger="dpo_plugin"):
        resumed = tiny_trainer(run, max_steps=2)
        output = resumed.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert resumed.finished_already and output.global_step == 2 and resumed.state.global_step == 0
    assert "where this run ends: nothing to train" in caplog.text
    assert sorted(path.name for path in run.iterdir()) == before
    assert (run / "checkpoint-2" / "model.safetensors").read_bytes() == weights


def test_an_unreadable_trainer_state_is_one_error_naming_it(tmp_path):
    run = tmp_path / "run"
    tiny_trainer(run, max_steps=2).train()
    (run / "checkpoint-2" / "trainer_state.json").write_text("[1, 2, 3]")
    with pytest.raises(UserError, match="checkpoint-2 cannot be resumed: its trainer_state.json"):
        tiny_trainer(run, max_steps=4).train(resume_from_checkpoint=str(run / "checkpoint-2"))


def test_sigterm_during_held_out_scoring_writes_no_final_outputs_and_says_so(tmp_path):
    """Training is over, the held-out pairs are being scored: SIGTERM lets the scoring finish and then exits 143
    without the final model or metrics, so the folder does not read as a finished run."""
    checkpoint = save_checkpoint(tmp_path / "tiny-model")
    data = write_splits(tmp_path / "pairs", make_pairs(8), make_pairs(400))
    run = tmp_path / "run"
    argv = tiny_run(checkpoint, data, run, "--heldout_eval_pairs", "400", "--heldout_batch_size", "1")
    log = tmp_path / "run.log"
    with log.open("w") as output:
        child = subprocess.Popen([sys.executable, "-m", "dpo_plugin.cli", *argv], stdout=output, stderr=output)
        deadline = time.monotonic() + 300
        while "Ranking pairs" not in log.read_text() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=300)
    text = log.read_text()
    assert child.returncode == 128 + signal.SIGTERM, text[-2000:]
    assert "Stopped by SIGTERM after training, during held-out scoring: no final model or metrics" in text
    assert not (run / "metrics.json").exists() and not (run / "model.safetensors").exists()


def test_sigterm_during_the_mixed_references_calibration_stops_before_training_and_says_so(
    tmp_path, capsys, monkeypatch, checkpoint
):
    """The signal arrives while the second layer's sensitivity is measured: the calibration stops there, nothing is
    cached, trained or written, and the run exits 143 saying so."""
    from dpo_plugin.training import mixed_reference, reference_preparation

    def signalled_at_the_second_layer(layers, **kwargs):
        for index, layer in enumerate(layers):
            if index == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield layer

    monkeypatch.setattr(mixed_reference, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(reference_preparation, "tqdm", signalled_at_the_second_layer)
    data = write_splits(tmp_path / "data", make_pairs(16), make_pairs(4))
    run = tmp_path / "run"
    argv = tiny_run(checkpoint, data, run, "--ref_quantization", "mixed")
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--ref_bytes_budget", "0.5"])
    assert exited.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"Stopped by SIGTERM during the mixed reference's calibration, before training: nothing was trained or "
        f"written to {run}."
    )
    assert not (tmp_path / "cache").exists()  # no sensitivities measured half-way were kept
    assert not run.exists() or not [path for path in run.iterdir() if not path.name.startswith(".")]
