"""PreferenceTrainer against TRL's DPOTrainer (parity) and against a direct full-logit computation (TDPO)."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import make_model, make_pairs, tiny_args
from trl import DPOConfig, DPOTrainer

from dpo_plugin.training.config import PreferenceConfig
from dpo_plugin.training.trainer import PreferenceTrainer
from dpo_plugin.utils.errors import ConfigError

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
TRL_KEYS = REWARD_KEYS + (
    "logps/chosen",
    "logps/rejected",
    "entropy",
    "logits/chosen",
    "logits/rejected",
    "mean_token_accuracy",
    "num_tokens",
)


def recording(trainer_cls):
    """The trainer class, also keeping every unrounded loss `compute_loss` returns."""

    class Recording(trainer_cls):
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            self.step_losses.append(loss.item())
            return loss

    return Recording


def train(trainer_cls, args, tokenizer, pairs, explicit_ref=True):
    model = make_model(len(tokenizer))
    ref_model = copy.deepcopy(model) if explicit_ref else None
    trainer = recording(trainer_cls)(
        model=model, ref_model=ref_model, args=args, train_dataset=pairs, processing_class=tokenizer
    )
    trainer.step_losses = []
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/chosen" in entry]
    return trainer, logs


@pytest.mark.parametrize(("plugin_loss", "trl_loss"), [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_matches_trl_over_optimizer_steps(plugin_loss, trl_loss, tokenizer, pairs, tmp_path):
    ours, our_logs = train(
        PreferenceTrainer, tiny_args(PreferenceConfig, tmp_path, loss_type=plugin_loss), tokenizer, pairs
    )
    trl, trl_logs = train(DPOTrainer, tiny_args(DPOConfig, tmp_path, loss_type=trl_loss), tokenizer, pairs)
    assert ours.args.plugin_loss_type == plugin_loss  # the plugin computed it, not TRL
    assert len(ours.step_losses) == len(trl.step_losses) == 6
    assert ours.step_losses == pytest.approx(trl.step_losses, abs=1e-5)
    assert len(our_logs) == len(trl_logs) == 6
    for ours_step, trl_step in zip(our_logs, trl_logs, strict=True):
        for key in TRL_KEYS:
            assert ours_step[key] == pytest.approx(trl_step[key], abs=1e-5), key
    assert ours.step_losses[0] != pytest.approx(ours.step_losses[-1], abs=1e-3)  # training moved the loss


def test_default_reference_is_the_policy_in_memory(tokenizer, pairs, tmp_path):
    trainer, logs = train(
        PreferenceTrainer, tiny_args(PreferenceConfig, tmp_path, max_steps=1), tokenizer, pairs, explicit_ref=False
    )
    # at step one the policy equals its frozen copy: every implicit reward is exactly zero
    assert logs[0]["rewards/chosen"] == 0.0 and logs[0]["rewards/margins"] == 0.0
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_precomputed_reference_logps_match_live_reference(tokenizer, pairs, tmp_path):
    _, live = train(PreferenceTrainer, tiny_args(PreferenceConfig, tmp_path), tokenizer, pairs)
    _, precomputed = train(
        PreferenceTrainer,
        tiny_args(PreferenceConfig, tmp_path, precompute_ref_log_probs=True),
        tokenizer,
        pairs,
        explicit_ref=False,
    )
    for live_step, pre_step in zip(live, precomputed, strict=True):
        for key in REWARD_KEYS:
            assert live_step[key] == pytest.approx(pre_step[key], abs=1e-5), key


def test_reference_free_runs_no_reference(tokenizer, pairs, tmp_path):
    trainer, logs = train(
        PreferenceTrainer,
        tiny_args(PreferenceConfig, tmp_path, reference_free=True, max_steps=2),
        tokenizer,
        pairs,
        explicit_ref=False,
    )
    assert trainer.ref_model is None
    # with log π_ref ≡ 0 the implicit reward is β log π_θ(y)
    assert logs[0]["rewards/chosen"] == pytest.approx(0.1 * logs[0]["logps/chosen"], rel=1e-5)


def direct_tdpo_loss(model, ref_model, batch, beta, alpha, detach_chosen_kl):
    """TDPO from full (B, L, V) logits of both models, written out token by token."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    with torch.no_grad():
        ref_logits = ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref_logits = ref_logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].float()
    logp, ref_logp = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    logratio = ((logp - ref_logp).gather(-1, labels[..., None]).squeeze(-1) * mask).sum(1)
    seq_kl = ((ref_logp.exp() * (ref_logp - logp)).sum(-1) * mask).sum(1)
    (chosen_lr, rejected_lr), (chosen_kl, rejected_kl) = logratio.chunk(2), seq_kl.chunk(2)
    if detach_chosen_kl:
        chosen_kl = chosen_kl.detach()
    margin = chosen_lr - rejected_lr - (1.0 if alpha is None else alpha) * (rejected_kl - chosen_kl)
    return -F.logsigmoid(beta * margin).mean(), seq_kl


@pytest.mark.parametrize("loss_type", ["tdpo1", "tdpo2"])
def test_tdpo_matches_direct_full_logit_computation(loss_type, tokenizer, pairs, tmp_path):
    args = tiny_args(PreferenceConfig, tmp_path, loss_type=loss_type, beta=0.5, tdpo_alpha=0.3)
    model = make_model(len(tokenizer))
    ref_model = make_model(len(tokenizer), seed=1)  # a different reference, so KL and log-ratios are not zero
    trainer = PreferenceTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=pairs, processing_class=tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    alpha = 0.3 if loss_type == "tdpo2" else None

    loss = trainer.compute_loss(trainer.model, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected, seq_kl = direct_tdpo_loss(model, ref_model, batch, 0.5, alpha, detach_chosen_kl=loss_type == "tdpo2")
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))

    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)
    metrics = trainer._metrics["train"]
    assert metrics["kl/chosen"][-1] == pytest.approx(seq_kl.chunk(2)[0].mean().item(), abs=1e-5)
    assert metrics["kl/rejected"][-1] == pytest.approx(seq_kl.chunk(2)[1].mean().item(), abs=1e-5)


def test_tdpo2_blocks_the_gradient_through_the_chosen_kl(tokenizer, pairs, tmp_path):
    """The stop-gradient changes the gradient: TDPO2's matches the detached form and not the undetached one."""
    args = tiny_args(PreferenceConfig, tmp_path, loss_type="tdpo2", beta=0.5, tdpo_alpha=1.0)
    model, ref_model = make_model(len(tokenizer)), make_model(len(tokenizer), seed=1)
    trainer = PreferenceTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=pairs, processing_class=tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    params = list(model.parameters())
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(trainer.compute_loss(model, batch), params)])

    def direct(detach):
        loss, _ = direct_tdpo_loss(model, ref_model, batch, 0.5, 1.0, detach_chosen_kl=detach)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    torch.testing.assert_close(grad, direct(detach=True), atol=1e-6, rtol=1e-4)
    assert (grad - direct(detach=False)).abs().max() > 1e-4


def test_peft_policy_uses_adapters_off_as_reference(tokenizer, pairs, tmp_path):
    from peft import LoraConfig

    args = tiny_args(PreferenceConfig, tmp_path, loss_type="tdpo2", max_steps=2)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)),
        args=args,
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert trainer.ref_model is None
    trainer.train()
    metrics = [entry for entry in trainer.state.log_history if "kl/chosen" in entry]
    # LoRA's B starts at zero: the first step sees policy == reference, so KL and rewards are exactly zero
    assert metrics[0]["kl/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[-1]["kl/chosen"] > 0.0


def test_evaluate_reports_the_plugin_metrics(tokenizer, pairs, tmp_path):
    args = tiny_args(PreferenceConfig, tmp_path, loss_type="tdpo1", per_device_eval_batch_size=4)
    model = make_model(len(tokenizer))
    trainer = PreferenceTrainer(
        model=model,
        ref_model=make_model(len(tokenizer), seed=1),
        args=args,
        train_dataset=pairs,
        eval_dataset=pairs.select(range(8)),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_kl/chosen"] > 0.0 and metrics["eval_kl/rejected"] > 0.0
    assert 0.0 <= metrics["eval_rewards/accuracies"] <= 1.0
    assert metrics["eval_loss"] > 0.0


def test_trls_own_dpo_config_is_converted_keeping_its_values_and_the_plugins_defaults(tokenizer, pairs, tmp_path):
    """A recipe written for `DPOTrainer` switches by changing the class: every value of its `DPOConfig` is kept, the
    plugin's own keys take `PreferenceConfig`'s defaults (the chunked head and shared-prompt packing on), and the
    plugin computes TRL's sigmoid loss."""
    defaults = tiny_args(PreferenceConfig, tmp_path)  # built first: building one resets accelerate's state
    args = tiny_args(DPOConfig, tmp_path, beta=0.2, max_steps=2)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)), args=args, train_dataset=pairs, processing_class=tokenizer
    )
    assert type(trainer.args) is PreferenceConfig and trainer.args.plugin_loss_type == "dpo"
    trl_keys = {f.name for f in dataclasses.fields(DPOConfig)}
    for key in ("beta", "max_steps", "learning_rate", "max_length", "output_dir", "seed", "loss_type"):
        assert getattr(trainer.args, key) == getattr(args, key), key
    plugin_keys = [f.name for f in dataclasses.fields(PreferenceConfig) if f.name not in trl_keys]
    assert {"share_prompt", "chunked_head", "max_weight_growth"} <= set(plugin_keys)
    for key in plugin_keys:
        assert getattr(trainer.args, key) == getattr(defaults, key), key
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.readers and all(reader.chunked for reader in trainer.readers.values())


def test_a_config_that_is_not_a_dpo_config_is_refused_in_one_line(tokenizer, pairs, tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(ConfigError, match="PreferenceTrainer takes a dpo_plugin.PreferenceConfig") as refused:
        PreferenceTrainer(
            model=make_model(len(tokenizer)),
            args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
            train_dataset=pairs,
            processing_class=tokenizer,
        )
    assert "TrainingArguments" in str(refused.value) and "\n" not in str(refused.value)


def test_pairs_longer_than_max_length_are_counted_and_said_in_one_line(tokenizer, tmp_path, caplog):
    """TRL's collator cuts them at training time: the trainer counts them (as a direct count over the tokenized rows
    does) and says so once, with the longest pair's length."""
    with caplog.at_level("WARNING", logger="dpo_plugin"):
        trainer = PreferenceTrainer(
            model=make_model(len(tokenizer)),
            args=tiny_args(PreferenceConfig, tmp_path, max_length=40),
            train_dataset=make_pairs(16),
            processing_class=tokenizer,
        )
    rows = trainer.train_dataset
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows]
    expected = sum(length > 40 for length in lengths)
    assert 0 < expected < len(rows) and trainer.truncated_pairs == expected
    assert f"{expected} of 16 pairs are longer than max_length=40 tokens (the longest: {max(lengths)})" in caplog.text
