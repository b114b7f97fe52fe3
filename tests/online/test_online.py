"""On-policy training: pair rules and ties against hand-made groups, and the loop learning a reward on a tiny model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pinned_rounds
import pytest
import torch
from datasets import Dataset
from helpers import cli_error, make_model, make_pairs, save_checkpoint, tiny_args, write_splits
from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from dpo_plugin import OnlinePreferenceConfig, OnlinePreferenceTrainer
from dpo_plugin.cli import main
from dpo_plugin.online.pairs import group_pairs
from dpo_plugin.online.recipe import parse_online_recipe
from dpo_plugin.utils.errors import ConfigError, UserError


@pytest.mark.parametrize(
    "rule, rewards, expected",
    [
        ("best_worst", [0.1, 0.9, 0.5, 0.2], [(1, 0)]),
        ("all_pairs", [0.1, 0.9, 0.5], [(1, 2), (1, 0), (2, 0)]),
        ("all_pairs", [1.0, 0.0, 1.0], [(0, 1), (2, 1)]),  # the tie between 0 and 2 is dropped
        ("best_worst", [0.3, 0.3, 0.3], []),  # a group of ties gives nothing
        ("best_random", [0.3, 0.3], []),
    ],
)
def test_pairs_follow_the_rule_and_drop_ties(rule, rewards, expected):
    assert group_pairs(rewards, rule, 0.0, np.random.default_rng(0)) == expected


def test_best_random_pairs_the_best_with_every_other_sample_over_draws_and_margins_drop_small_gaps():
    rng, rewards = np.random.default_rng(0), [0.0, 1.0, 0.5, 0.25]
    partners = {group_pairs(rewards, "best_random", 0.0, rng)[0] for _ in range(200)}
    assert partners == {(1, 0), (1, 2), (1, 3)}
    # gaps of at least 0.5 only: 1 over 2 (0.5), 3 (0.75) and 0 (1.0), and 2 over 0 (0.5)
    assert group_pairs(rewards, "all_pairs", 0.5, rng) == [(1, 2), (1, 3), (1, 0), (2, 0)]


RECIPES = Path(__file__).parents[2] / "recipes"


def a_count(prompts, completions):
    """The reward the policy learns: how many times the letter a appears in its completion."""
    return [float(completion.count("a")) for completion in completions]


def online_args(tmp_path, **overrides):
    settings = dict(
        rounds=4,
        prompts_per_round=8,
        samples_per_prompt=4,
        max_new_tokens=8,
        sampling_batch_size=8,
        per_device_train_batch_size=4,
        learning_rate=0.02,
        max_steps=-1,
        logging_steps=1,
    )
    return tiny_args(OnlinePreferenceConfig, tmp_path, **(settings | overrides))


def prompts(n=16):
    return Dataset.from_list([{"prompt": f"Q{i}: write"} for i in range(n)])


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "tdpo2"])
def test_the_policy_learns_the_reward_round_after_round(loss_type, tokenizer, tmp_path):
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=online_args(tmp_path, loss_type=loss_type, beta=0.1 if loss_type != "ipo" else 0.5),
        train_dataset=prompts(),
        processing_class=tokenizer,
    )
    rounds = trainer.train()
    means = [entry["reward/mean"] for entry in rounds]
    assert len(rounds) == 4 and all(entry["pairs"] > 0 for entry in rounds)
    assert means[-1] > 1.5 * means[0], means
    assert rounds[0]["kl"] == pytest.approx(0.0, abs=1e-5) and rounds[-1]["kl"] > 0  # it moved off the reference
    assert (tmp_path / "round-3" / "round.json").is_file()


class FirstLogOfEachRound(TrainerCallback):
    """Keeps the first training log entry of each round's trainer (each round trains a trainer of its own)."""

    def __init__(self):
        self.entries = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.waiting = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.waiting and "rewards/margins" in logs:
            self.entries.append(logs)
            self.waiting = False


def online_trainer(tokenizer, tmp_path, lora=False, callbacks=None, **overrides):
    peft = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
    return OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=online_args(tmp_path, **overrides),
        train_dataset=prompts(),
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=callbacks,
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("reference_update", ["fixed", "previous_round"])
def test_both_reference_schedules_train_full_and_lora_policies(lora, reference_update, tokenizer, tmp_path):
    """Each round trains against its reference: `fixed`, the initial policy (a LoRA policy's base); `previous_round`,
    the policy as the round starts, so its first logged implicit rewards are 0 (π_θ = π_ref before the first step).
    The KL of every round's samples is to the initial policy: 0 in round 0, then growing as the policy moves."""
    first_logs = FirstLogOfEachRound()
    rate = 0.05 if lora else 0.02
    trainer = online_trainer(
        tokenizer, tmp_path, lora, [first_logs], rounds=3, reference_update=reference_update, learning_rate=rate
    )
    rounds = trainer.train()
    kls = [entry["kl"] for entry in rounds]
    assert kls[0] == pytest.approx(0.0, abs=1e-5) and kls[-1] > 0.05, kls
    assert all(entry["steps"] > 0 for entry in rounds)
    first_logged = [entry["rewards/margins"] for entry in first_logs.entries]
    if reference_update == "previous_round":
        assert first_logged == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    else:
        assert first_logged[0] == pytest.approx(0.0, abs=1e-6) and abs(first_logged[-1]) > 1e-3, first_logged
    if lora:
        assert (tmp_path / "round-2" / "adapter_model.safetensors").is_file()
        has_ref = "ref" in trainer.model.peft_config
        assert has_ref == (reference_update == "previous_round")  # TRL's copy of the adapters, or the base
        assert not any(p.requires_grad for name, p in trainer.model.named_parameters() if ".ref." in name)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_rounds_leave_the_models_forward_as_they_found_it_and_write_nothing_but_rounds(lora, tokenizer, tmp_path):
    """Each round's `DPOTrainer` wraps `forward` with TRL's fused head; after 3 rounds no wrapper is left (they would
    stack one per round), and the rounds' trainers left no folder behind."""
    trainer = online_trainer(tokenizer, tmp_path, lora, rounds=3)
    trainer.train()
    base = trainer.model.get_base_model() if lora else trainer.model
    assert "forward" not in vars(base)
    if not lora:
        assert "forward" not in vars(trainer.ref_model)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["round-0", "round-1", "round-2"]


def test_a_lora_policy_is_wrapped_once_with_the_adapters_trl_would_draw(tokenizer, tmp_path):
    """`peft_config` wraps the policy in `__init__`, with the initial adapters TRL's `DPOTrainer` draws for the same
    seed; the rounds train that one PEFT model in place (no second wrapper), and a PEFT model given with a
    `peft_config` is refused, as TRL refuses it."""
    trainer = online_trainer(tokenizer, tmp_path / "online", lora=True, rounds=2)
    policy = trainer.model
    assert isinstance(policy, PeftModel) and not isinstance(policy.get_base_model(), PeftModel)
    trl_args = tiny_args(DPOConfig, tmp_path / "trl", seed=trainer.args.seed)
    trl = DPOTrainer(
        model=make_model(len(tokenizer)),
        args=trl_args,
        train_dataset=make_pairs(),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    ours, theirs = get_peft_model_state_dict(policy), get_peft_model_state_dict(trl.model)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    trainer.train()
    assert trainer.model is policy and not isinstance(policy.get_base_model(), PeftModel)
    with pytest.raises(ConfigError, match="already has PEFT adapters"):
        OnlinePreferenceTrainer(
            model=policy,
            reward_funcs=a_count,
            args=online_args(tmp_path / "twice"),
            train_dataset=prompts(),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, task_type="CAUSAL_LM"),
        )


def test_held_out_prompts_are_sampled_as_many_rows_a_call_as_the_rounds_samples(tokenizer, tmp_path):
    """The held-out evaluation samples through the round's rollout: `sampling_batch_size` × `samples_per_prompt`
    rows a `generate` call (one completion a prompt), each prompt once."""
    calls = []

    def length(prompts, completions):
        calls.append(len(completions))
        return [float(len(completion)) for completion in completions]

    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=online_args(tmp_path, rounds=1, sampling_batch_size=2, samples_per_prompt=4),
        train_dataset=prompts(),
        eval_dataset=prompts(12),
        processing_class=tokenizer,
        eval_reward_funcs={"length": length},
    )
    trainer.eval_fn(trainer.model, -1)
    assert calls == [8, 8]  # 12 prompts: 8 a call, the second call wrapping around to the first 4


TIMES = ("time/sampling", "time/ranking", "time/training")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_stopped_run_resumes_at_the_next_round_exactly(lora, tokenizer, tmp_path):
    """Two rounds, then the same run with rounds: 4 in the same output_dir: it loads round 1's policy and its rounds
    2 and 3 are those of an uninterrupted 4-round run, metric for metric."""
    schedule = "previous_round" if lora else "fixed"
    whole = online_trainer(tokenizer, tmp_path / "whole", lora, reference_update=schedule).train()
    online_trainer(tokenizer, tmp_path / "stopped", lora, rounds=2, reference_update=schedule).train()
    resumed = online_trainer(tokenizer, tmp_path / "stopped", lora, reference_update=schedule).train()
    assert [entry["round"] for entry in resumed] == [0, 1, 2, 3]
    for ours, theirs in zip(resumed, whole, strict=True):
        assert set(ours) == set(theirs)
        for key in set(ours) - set(TIMES):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), (ours["round"], key)


def test_config_refuses_what_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="samples_per_prompt must be an integer >= 2"):
        online_args(tmp_path, samples_per_prompt=1)
    with pytest.raises(ConfigError, match="pair_rule 'best' is not known"):
        online_args(tmp_path, pair_rule="best")
    with pytest.raises(ConfigError, match="previous_round"):
        online_args(tmp_path, reference_update="previous_round", ref_quantization="nf4")


def raises_inside(prompts, completions):
    raise KeyError("no such prompt")


def one_reward_too_few(prompts, completions):
    return [1.0] * (len(completions) - 1)


def online_command(checkpoint, data, output_dir, *extra):
    command = ["online", "--model_name_or_path", str(checkpoint), "--dataset_name", str(data)]
    command += ["--output_dir", str(output_dir), "--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
    command += ["--gradient_checkpointing", "false", "--rounds", "4", "--prompts_per_round", "8"]
    command += ["--samples_per_prompt", "4", "--max_new_tokens", "8", "--per_device_train_batch_size", "4"]
    command += ["--learning_rate", "0.02", "--max_length", "64", "--disable_tqdm", "true", "--logging_steps", "1"]
    return [*command, *extra]


def test_the_online_command_learns_the_reward_and_writes_its_outputs(tmp_path):
    """A prompt-only dataset (TRL's format for online trainers), and held-out prompts evaluated before the first
    round and after each: the held-out reward rises with the samples' and the held-out KL to the start grows."""
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "prompts", prompts(16), prompts(6))
    extra = ["--reward_funcs", "test_online:a_count", "--eval_prompts", "6"]
    main(online_command(checkpoint, data, tmp_path / "run", *extra))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    means = [entry["reward/mean"] for entry in metrics["rounds"]]
    assert len(means) == 4 and means[-1] > 1.5 * means[0], means
    start, last = metrics["start_eval"], metrics["rounds"][-1]
    assert start["kl"] == pytest.approx(0.0, abs=1e-5) and last["eval/kl"] > 0.05
    assert last["eval/reward/a_count"] > start["reward/a_count"] + 0.5 and last["eval/reward/a_count_se"] > 0
    gain = metrics["heldout_gain"]["reward/a_count"]
    assert gain["gain"] == pytest.approx(last["eval/reward/a_count"] - start["reward/a_count"])
    half = 1.959964 * (start["reward/a_count_se"] ** 2 + last["eval/reward/a_count_se"] ** 2) ** 0.5
    assert gain["low"] == pytest.approx(gain["gain"] - half) and gain["high"] == pytest.approx(gain["gain"] + half)
    assert set(metrics["heldout_gain"]) == {"reward/a_count", "kl"}
    assert (tmp_path / "run" / "rounds.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "run" / "model.safetensors").is_file() and not list((tmp_path / "run").glob(".*"))


def test_held_out_evaluation_scores_the_eval_rewards_against_the_start(tokenizer, tmp_path):
    """`eval_reward_funcs` score the held-out samples (not the training reward); the same prompts and sampling
    seed every time, so the start's evaluation is the initial policy's, reproducibly."""
    a_length = lambda prompts, completions: [float(len(c)) for c in completions]  # noqa: E731
    make = lambda folder: OnlinePreferenceTrainer(  # noqa: E731
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=online_args(tmp_path / folder, rounds=1),
        train_dataset=prompts(),
        eval_dataset=prompts(5),
        processing_class=tokenizer,
        eval_reward_funcs={"length": a_length},
    )
    first, second = make("first"), make("second")
    rounds = first.train()
    assert set(first.start_eval) == {"reward/length", "reward/length_se", "kl", "kl_se"}
    assert {"eval/reward/length", "eval/kl", "time/evaluation"} <= set(rounds[0])
    assert second.eval_fn(second.model, -1) == pytest.approx(first.start_eval)
    assert json.loads((tmp_path / "first" / "start_eval.json").read_text()) == first.start_eval


@pytest.mark.parametrize(
    "reward, message",
    [
        ("no_such_reward", "'no_such_reward' is neither a built-in reward (gold_positive"),
        ("test_online:missing", "'test_online:missing' does not resolve"),
        ("test_online:raises_inside", "reward function 'raises_inside' raised KeyError: 'no such prompt'"),
        ("test_online:one_reward_too_few", "'one_reward_too_few' returned 31 rewards, expected 32"),
    ],
)
def test_a_bad_reward_function_is_one_line_naming_it_and_writes_nothing(reward, message, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(16), make_pairs(4))
    run = tmp_path / "run"
    assert message in cli_error(capsys, online_command(checkpoint, data, run, "--reward_funcs", reward))
    assert not run.exists()


@pytest.mark.parametrize("recipe", ["online_dpo.yaml", "online_sentiment.yaml"])
def test_the_online_recipes_parse(recipe):
    script_args, config, model_args = parse_online_recipe(["--config", str(RECIPES / recipe)])
    assert script_args.reward_funcs and config.rounds >= 1 and model_args.use_peft
    assert config.prompts_per_round % config.per_device_train_batch_size == 0  # what `bench online` needs


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_stopped_at_any_moment_resumes_to_the_uninterrupted_result(stop, tmp_path):
    """Signal a `dpo-plugin online` process once its first round is saved (whatever it is doing then: a round
    is published whole or not at all), run the same command again: the rounds equal an uninterrupted run's. SIGTERM
    stops it cleanly at the end of its unit of work: exit 143 and a line saying what is kept."""
    checkpoint = save_checkpoint(tmp_path / "tiny")
    data = write_splits(tmp_path / "pairs", make_pairs(16), make_pairs(4))
    reward = ["--reward_funcs", "test_online:a_count"]
    main(online_command(checkpoint, data, tmp_path / "whole", *reward))
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "dpo_plugin.cli", *online_command(checkpoint, data, killed, *reward)]
    here = Path(__file__).parent  # the reward function's module, and the helpers it imports
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (killed / "round-0" / "round.json").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(stop)
    code = process.wait(timeout=300)
    log.close()
    output = (tmp_path / "killed.log").read_text()
    assert (killed / "round-0" / "round.json").is_file(), output[-2000:]
    assert not (killed / "metrics.json").is_file()  # stopped before its end
    if stop == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM and "Traceback" not in output, output[-2000:]
        assert "Stopped by SIGTERM: rounds 0-" in output and "resume at round" in output, output[-2000:]
    main(online_command(checkpoint, data, killed, *reward))
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["rounds"]
    resumed = json.loads((killed / "metrics.json").read_text())["rounds"]
    for ours, theirs in zip(resumed, whole, strict=True):
        for key in set(ours) - set(TIMES):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), (ours["round"], key)


@pytest.mark.parametrize("name", list(pinned_rounds.RUNS))
def test_the_pinned_tiny_runs_give_the_same_numbers_round_for_round(name, tmp_path):
    """`pinned_rounds.json` holds these runs' per-round metrics as the code gave them before the round's
    restructuring (TRL's calling conventions, one state set up once): a change that alters a number shows here."""
    pinned = json.loads(pinned_rounds.PINNED.read_text())[name]
    rounds = pinned_rounds.run(name, tmp_path)
    assert len(rounds) == len(pinned)
    for ours, theirs in zip(rounds, pinned, strict=True):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (ours["round"], key)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"beta": 0.3, "learning_rate": 0.01}, ["beta: 0.1 there, 0.3 here", "learning_rate: 0.02 there, 0.01 here"]),
        ({"lora": True}, ["lora: null there"]),
        ({"samples_per_prompt": 2, "temperature": 0.7}, ["samples_per_prompt", "generation"]),
    ],
    ids=["objective-and-optimizer", "lora-over-full", "sampling"],
)
def test_a_rerun_with_another_recipe_is_refused_naming_the_changed_keys(change, named, tokenizer, tmp_path):
    """Two rounds of one run, then a rerun into its folder with other settings (and more rounds): refused before
    anything is written, naming each changed key; the same recipe with more rounds resumes."""
    online_trainer(tokenizer, tmp_path, rounds=2).train()
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    lora = change.pop("lora", False)
    with pytest.raises(UserError, match="holds rounds of another run") as refused:
        online_trainer(tokenizer, tmp_path, lora, rounds=3, **change).train()
    assert all(part in str(refused.value) for part in named), str(refused.value)
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before
    assert [entry["round"] for entry in online_trainer(tokenizer, tmp_path, rounds=3).train()] == [0, 1, 2]


def test_rounds_saved_without_their_run_settings_are_not_resumed(tokenizer, tmp_path):
    online_trainer(tokenizer, tmp_path, rounds=1).train()
    (tmp_path / "round-0" / "run.json").unlink()
    with pytest.raises(UserError, match="cannot be checked: give a new output_dir"):
        online_trainer(tokenizer, tmp_path, rounds=2).train()
