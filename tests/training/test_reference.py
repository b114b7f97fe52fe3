"""The reference: `choose_reference`'s order and contexts, and quantized references (bitsandbytes NF4/FP4/int8):
training, the measured gap, and every error.

Tests taking `device` run on the CPU, and again on CUDA where a GPU is present (skipped otherwise).
"""

import sys
from types import SimpleNamespace

import pytest
import torch
from helpers import make_model, make_pairs, make_tokenizer, quantized_trainer, save_checkpoint, tiny_args
from peft import LoraConfig
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.evaluation.scoring import SequenceScorer, as_text
from dpo_plugin.training.reference import (
    ADAPTERS_OFF,
    CHECKPOINT,
    COPY,
    EXPLICIT,
    INITIAL_POLICY,
    RefQuantization,
    check_bitsandbytes_device,
    choose_reference,
    frozen_copy,
    load_reference,
)
from dpo_plugin.training.reference_preparation import check_reference_settings

NF4_REFERENCE = RefQuantization("nf4")
GAP_KEYS = ("ref/logp_abs_diff_mean", "ref/logp_abs_diff_max", "ref/token_kl_mean")
NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=NO_GPU)])
def device(request):
    return request.param


@pytest.mark.parametrize(
    ("quantization", "layer_class"), [("nf4", "Linear4bit"), ("fp4", "Linear4bit"), ("int8", "Linear8bitLt")]
)
def test_each_quantization_trains_and_logs_its_gap_once(
    checkpoint, tokenizer, tmp_path, quantization, layer_class, device
):
    trainer = quantized_trainer(checkpoint, tokenizer, tmp_path, device=device, ref_quantization=quantization)
    assert trainer.ref_model.device.type == trainer.model.device.type == device
    assert type(trainer.ref_model.model.layers[0].self_attn.q_proj).__name__ == layer_class
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())
    full_bytes = AutoModelForCausalLM.from_pretrained(checkpoint).get_memory_footprint()
    assert trainer.reference_report["memory_bytes"] < full_bytes
    trainer.train()
    first, second = trainer.state.log_history[:2]
    assert all(key in first for key in GAP_KEYS) and not any(key in second for key in GAP_KEYS)
    assert first[GAP_KEYS[0]] > 0 and first[GAP_KEYS[1]] >= first[GAP_KEYS[0]] and first[GAP_KEYS[2]] >= 0
    assert torch.isfinite(torch.tensor(first["loss"]))


@pytest.mark.parametrize(
    ("loss_type", "precompute"),
    [("dpo", True), ("ipo", False), ("tdpo2", False)],
    ids=["dpo-precomputed", "ipo", "tdpo2"],
)
def test_objectives_train_against_a_4bit_reference(checkpoint, tokenizer, tmp_path, loss_type, precompute, device):
    trainer = quantized_trainer(
        checkpoint,
        tokenizer,
        tmp_path,
        device=device,
        loss_type=loss_type,
        precompute_ref_log_probs=precompute,
        ref_gap_batches=0,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    if loss_type == "tdpo2":
        assert trainer.state.log_history[0]["kl/chosen"] >= 0


def test_the_gap_equals_a_direct_computation(checkpoint, tokenizer, tmp_path, device):
    """|log π_q(y) − log π_full(y)| over the first two batches' chosen and rejected completions, scored directly."""
    pairs = make_pairs(8)
    trainer = quantized_trainer(checkpoint, tokenizer, tmp_path, pairs=pairs, device=device, ref_gap_batches=2)
    gap = trainer.reference_report["gap"]
    text = as_text(pairs, tokenizer)
    full = SequenceScorer(AutoModelForCausalLM.from_pretrained(checkpoint).eval().to(device), tokenizer)
    quantized = SequenceScorer(trainer.ref_model, tokenizer)
    diffs = torch.cat(
        [(quantized(text["prompt"], text[c]) - full(text["prompt"], text[c])).abs() for c in ("chosen", "rejected")]
    )
    assert gap["sequences"] == 16
    assert gap["logp_abs_diff_mean"] == pytest.approx(diffs.mean().item(), rel=1e-4)
    assert gap["logp_abs_diff_max"] == pytest.approx(diffs.max().item(), rel=1e-4)


def test_lora_policy_beside_a_4bit_reference(checkpoint, tokenizer, tmp_path, device, caplog):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with caplog.at_level("WARNING", logger="dpo_plugin"):
        trainer = quantized_trainer(checkpoint, tokenizer, tmp_path, device=device, peft_config=lora)
    assert "Its reference was free already" in caplog.text and "load_in_4bit: true" in caplog.text
    assert trainer.ref_model is not None and trainer.reference_report["gap"]["logp_abs_diff_mean"] > 0
    trainer.train()
    assert all(key in trainer.state.log_history[0] for key in GAP_KEYS)


def test_another_checkpoint_as_full_precision_reference(checkpoint, tokenizer, tmp_path):
    other = save_checkpoint(tmp_path / "other", make_model(len(tokenizer), seed=5, hidden_size=64), tokenizer)
    trainer = quantized_trainer(checkpoint, tokenizer, tmp_path, ref_quantization="none", ref_model_name_or_path=other)
    assert trainer.reference_report == {
        "checkpoint": other,
        "quantization": "none",
        "memory_bytes": trainer.ref_model.get_memory_footprint(),
    }
    expected = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in trainer.ref_model.state_dict().items())


# ---------------------------------------------------------------- errors, each before training


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ref_quantization": "int4"}, "ref_quantization 'int4' is not known"),
        ({"ref_quantization": "nf4", "ref_bnb_4bit_compute_dtype": "int8"}, "ref_bnb_4bit_compute_dtype 'int8'"),
        ({"ref_quantization": "nf4", "reference_free": True}, "reference_free runs no reference"),
        ({"ref_quantization": "nf4", "sync_ref_model": True}, "sync_ref_model mixes"),
        ({"ref_gap_batches": -1}, "ref_gap_batches must be an integer >= 0"),
        ({"qlora_adapter_dtype": "fp16"}, "qlora_adapter_dtype 'fp16' is not known"),
    ],
)
def test_config_errors(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        tiny_args(PreferenceConfig, tmp_path, **settings)


def test_a_ref_model_object_and_ref_keys_together_are_refused(checkpoint, tokenizer, tmp_path):
    policy = AutoModelForCausalLM.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="Got both a ref_model object"):
        PreferenceTrainer(
            model=policy,
            ref_model=AutoModelForCausalLM.from_pretrained(checkpoint),
            args=tiny_args(PreferenceConfig, tmp_path, ref_quantization="nf4"),
            train_dataset=make_pairs(),
            processing_class=tokenizer,
        )


def test_a_policy_built_in_memory_needs_a_reference_checkpoint(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="built in memory"):
        PreferenceTrainer(
            model=make_model(len(tokenizer), hidden_size=64),
            args=tiny_args(PreferenceConfig, tmp_path, ref_quantization="nf4"),
            train_dataset=make_pairs(),
            processing_class=tokenizer,
        )


def test_a_reference_with_another_tokenizer_is_refused(checkpoint, tokenizer, tmp_path):
    other_tokenizer = make_tokenizer()
    other_tokenizer.add_tokens(["<new>"])
    other = save_checkpoint(tmp_path / "other", make_model(len(other_tokenizer), hidden_size=64), other_tokenizer)
    with pytest.raises(ValueError, match="different tokenizer"):
        quantized_trainer(checkpoint, tokenizer, tmp_path, ref_model_name_or_path=other)


def test_a_reference_with_another_vocabulary_size_is_refused(checkpoint, tokenizer, tmp_path):
    other = save_checkpoint(tmp_path / "other", make_model(len(tokenizer) + 64, hidden_size=64), tokenizer)
    with pytest.raises(ValueError, match="predicts over"):
        quantized_trainer(checkpoint, tokenizer, tmp_path, ref_model_name_or_path=other)


def test_devices_bitsandbytes_cannot_use_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="cannot quantize on device 'mps'"):
        check_bitsandbytes_device(torch.device("mps"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(ValueError, match="needs bitsandbytes"):
        check_bitsandbytes_device(torch.device("cpu"))


def test_a_quantized_reference_is_refused_under_fsdp_and_zero3(checkpoint, tokenizer):
    policy = AutoModelForCausalLM.from_pretrained(checkpoint)
    for args in (
        SimpleNamespace(ref_quantization="nf4", fsdp=["full_shard"], deepspeed_plugin=None),
        SimpleNamespace(ref_quantization="int8", fsdp=[], deepspeed_plugin=SimpleNamespace(zero_stage=3)),
    ):
        with pytest.raises(ValueError, match="cannot be sharded"):
            check_reference_settings(args)
    with pytest.raises(ValueError, match="cannot quantize on device"):
        load_reference(checkpoint, policy, tokenizer, NF4_REFERENCE, device=torch.device("meta"))


def test_qlora_policy_trains_against_its_own_base_with_adapters_off(checkpoint, tokenizer, tmp_path, device):
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=four_bit, device_map={"": device})
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = PreferenceTrainer(
        model=policy,
        args=tiny_args(PreferenceConfig, tmp_path, max_steps=3, learning_rate=1e-2, use_cpu=device == "cpu"),
        train_dataset=make_pairs(),
        processing_class=tokenizer,
        peft_config=lora,
    )
    assert trainer.ref_model is None  # the reference is the 4-bit base, adapters off
    trainer.train()
    margins = [entry["rewards/margins"] for entry in trainer.state.log_history if "rewards/margins" in entry]
    assert margins[0] == 0.0 and margins[-1] > 0.0  # starts at the reference, then learns


@pytest.mark.parametrize("adapter_dtype", ["bfloat16", "float32"])
def test_qlora_adapters_train_in_the_dtype_asked_for(checkpoint, tokenizer, tmp_path, adapter_dtype):
    """TRL casts a quantized base's adapters to bfloat16; `qlora_adapter_dtype: float32` keeps them in float32."""
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=four_bit, device_map={"": "cpu"})
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = tiny_args(PreferenceConfig, tmp_path, max_steps=2, bf16=True, qlora_adapter_dtype=adapter_dtype)
    trainer = PreferenceTrainer(
        model=policy, args=args, train_dataset=make_pairs(), processing_class=tokenizer, peft_config=lora
    )
    trainer.train()
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert trained == {getattr(torch, adapter_dtype)}
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


def _logits(model, context, input_ids):
    with torch.no_grad(), context():
        return model(input_ids=input_ids).logits


def test_choose_reference_takes_the_first_that_applies(checkpoint, tokenizer):
    from peft import get_peft_model

    policy = AutoModelForCausalLM.from_pretrained(checkpoint)
    ids = torch.tensor([[5, 6, 7, 8]])
    explicit = make_model(len(tokenizer), seed=3, hidden_size=64)
    chosen = choose_reference(policy, explicit)
    assert chosen.kind == EXPLICIT and chosen.model is explicit and chosen.separate
    assert not any(p.requires_grad for p in explicit.parameters()) and not explicit.training

    copy = choose_reference(policy)
    assert copy.kind == COPY and copy.model is not policy and copy.checkpoint == checkpoint
    assert torch.equal(_logits(copy.model, copy.context, ids), _logits(policy, copy.context, ids))
    assert not any(p.requires_grad for p in copy.model.parameters())

    initial = choose_reference(policy, precomputed=True)
    assert initial.kind == INITIAL_POLICY and initial.model is policy and not initial.separate

    loaded = choose_reference(policy, checkpoint=checkpoint, tokenizer=tokenizer)
    assert loaded.kind == CHECKPOINT and loaded.quantization.mode == "none" and loaded.model is not policy

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_policy = get_peft_model(AutoModelForCausalLM.from_pretrained(checkpoint), lora)
    adapters_off = choose_reference(peft_policy, precomputed=True)  # a PEFT policy needs no precomputed pass
    assert adapters_off.kind == ADAPTERS_OFF and adapters_off.model is peft_policy
    base = _logits(policy, adapters_off.context, ids)
    assert torch.allclose(_logits(peft_policy, adapters_off.context, ids), base, atol=1e-6)
    assert not torch.allclose(_logits(peft_policy, lambda: torch.no_grad(), ids), base, atol=1e-3)  # adapters on
    quantized = choose_reference(peft_policy, quantization=NF4_REFERENCE, tokenizer=tokenizer)
    assert quantized.kind == CHECKPOINT and quantized.checkpoint == checkpoint  # the adapters' base

    with pytest.raises(ValueError, match="Got both a ref_model object and ref_model_name_or_path"):
        choose_reference(policy, explicit, quantization=NF4_REFERENCE)


def test_a_4bit_reference_of_narrow_layers_is_refused_before_loading_on_a_cpu_that_packs_them(tokenizer, tmp_path):
    """bitsandbytes' CPU kernel (AVX512-BF16) packs a 4-bit layer's outputs in blocks of 32 and fails on a narrower
    layer with a reshape error inside the first reference pass; the tiny 32-wide model's k_proj has 16 outputs."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU's bitsandbytes kernel does not pack 4-bit weights")
    narrow = save_checkpoint(tmp_path / "narrow", hidden_size=32)
    policy = AutoModelForCausalLM.from_pretrained(narrow)
    with pytest.raises(ValueError, match=r"multiple of 32.*k_proj \(16 outputs\).*int8"):
        choose_reference(policy, quantization=NF4_REFERENCE, tokenizer=tokenizer)


def test_a_frozen_copy_of_a_policy_a_trainer_has_patched_runs_its_own_weights(tokenizer, pairs, tmp_path):
    """TRL's DPOTrainer patches the policy's forward with its fused LM head, a closure over the policy's own bound
    forward; a plain deep copy would keep calling the policy. The copy runs itself: moving the policy's weights
    afterwards leaves the copy's logits as they were (a second run's reference, on-policy rounds)."""
    policy = make_model(len(tokenizer))
    PreferenceTrainer(
        model=policy,
        args=tiny_args(PreferenceConfig, tmp_path, max_steps=1),
        train_dataset=pairs,
        processing_class=tokenizer,
    ).train()
    assert "forward" in policy.__dict__  # what this guards against is still there
    copy = frozen_copy(policy)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = copy(input_ids=ids).logits
    with torch.no_grad():
        policy.lm_head.weight.mul_(2.0)
    assert torch.equal(copy(input_ids=ids).logits, before)
    assert not torch.allclose(policy(input_ids=ids).logits, before)
