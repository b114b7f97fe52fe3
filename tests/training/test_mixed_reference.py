"""The mixed-precision reference (`ref_quantization: mixed`): layer bytes as bitsandbytes stores them, layers that
compute what their de-quantized weights do, the greedy plan against a brute-force search, and trainers at both ends
of the budget checked against the references they must equal (transformers' own NF4 loading; full precision)."""

import copy
import itertools

import pytest
import torch
from helpers import make_model, make_pairs, quantized_trainer
from torch import nn
from transformers import AutoModelForCausalLM

from dpo_plugin import PreferenceConfig
from dpo_plugin.training.mixed_reference import (
    FULL,
    INT8,
    NF4,
    PRECISIONS,
    all_nf4_bytes,
    bf16_embedding_saving,
    hold_embeddings_in_bf16,
    layer_bytes,
    model_bytes,
    plan_precisions,
    quantizable_layers,
    quantized_layer,
    rounding_error,
)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Measured sensitivities are cached: each test gets an empty cache folder of its own."""
    monkeypatch.setenv("DPO_PLUGIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_layer_bytes_are_what_bitsandbytes_stores():
    torch.manual_seed(0)
    layer = nn.Linear(128, 64)
    bias = 64 * 4
    nf4 = quantized_layer(layer, NF4, torch.float32)
    stored = nf4.weight.numel() * nf4.weight.element_size() + nf4.weight.quant_state.absmax.numel() * 4
    assert layer_bytes(layer, NF4) == stored + bias
    int8 = quantized_layer(layer, INT8, torch.float32)
    assert int8.weight.dtype == torch.int8
    assert layer_bytes(layer, INT8) == int8.weight.numel() + int8.weight.SCB.numel() * 4 + bias
    assert layer_bytes(layer, FULL) == 128 * 64 * 4 + bias
    assert quantized_layer(layer, FULL, torch.float32) is layer


def test_quantized_layers_compute_what_their_dequantized_weights_do():
    import bitsandbytes.functional as bnb_f

    torch.manual_seed(0)
    layer, x = nn.Linear(128, 64), torch.randn(5, 128)
    nf4 = quantized_layer(layer, NF4, torch.float32)
    dequantized = bnb_f.dequantize_4bit(nf4.weight.data, nf4.weight.quant_state)
    with torch.no_grad():
        exact = nn.functional.linear(x, dequantized, layer.bias)  # bitsandbytes' CPU kernel computes in bf16 here
        torch.testing.assert_close(nf4(x), exact, atol=1e-2 * exact.abs().max().item(), rtol=0)
        int8 = quantized_layer(layer, INT8, torch.float32)
        rows = int8.weight.data.float() * int8.weight.SCB[:, None].float() / 127  # LLM.int8's row-wise absmax scale
        torch.testing.assert_close(rows, layer.weight, atol=layer.weight.abs().max().item() / 127, rtol=0)
        exact = layer(x)
        assert (int8(x) - exact).abs().max() < (nf4(x) - exact).abs().max()  # int8 is the finer of the two
    # the rounding errors the plan scales int8's sensitivity by, against the layers' own weights
    assert rounding_error(layer.weight, NF4) == pytest.approx((layer.weight - dequantized).norm().item(), rel=1e-5)
    assert rounding_error(layer.weight, INT8) == pytest.approx((layer.weight - rows).norm().item(), rel=1e-3)
    assert rounding_error(layer.weight, INT8) < rounding_error(layer.weight, NF4) / 4


def layers_and_sensitivity():
    layers = {name: nn.Linear(64, width, bias=False) for name, width in (("a", 64), ("b", 64), ("c", 128))}
    sensitivity = {
        "a": {NF4: 1.0, INT8: 0.1, FULL: 0.0},
        "b": {NF4: 0.02, INT8: 0.01, FULL: 0.0},
        "c": {NF4: 3.0, INT8: 0.5, FULL: 0.0},
    }
    return layers, sensitivity, sum(layer_bytes(layer, FULL) for layer in layers.values()) + 4096


def brute_force(layers, sensitivity, full_bytes, budget):
    """The least additive error of any assignment of precisions within the budget, by trying all of them."""
    others = full_bytes - sum(layer_bytes(layer, FULL) for layer in layers.values())
    best = None
    for choice in itertools.product(PRECISIONS, repeat=len(layers)):
        spent = others + sum(layer_bytes(layer, p) for layer, p in zip(layers.values(), choice, strict=True))
        error = sum(sensitivity[name][p] for name, p in zip(layers, choice, strict=True))
        if spent <= budget * full_bytes and (best is None or error < best):
            best = error
    return best


@pytest.mark.parametrize("budget", [0.2, 0.25, 0.3, 0.4, 0.6, 1.0])
def test_the_plan_fits_the_budget_and_matches_a_brute_force_search(budget):
    layers, sensitivity, full_bytes = layers_and_sensitivity()
    plan = plan_precisions(layers, sensitivity, full_bytes, budget)
    assert plan.bytes <= budget * full_bytes and plan.full_bytes == full_bytes
    others = full_bytes - sum(layer_bytes(layer, FULL) for layer in layers.values())
    assert plan.bytes == others + sum(layer_bytes(layers[name], p) for name, p in plan.precisions.items())
    assert plan.estimated_gap == pytest.approx(brute_force(layers, sensitivity, full_bytes, budget))
    if budget == 1.0:
        assert set(plan.precisions.values()) == {FULL} and plan.estimated_gap == 0


def test_a_budget_below_every_layer_in_nf4_is_refused_naming_the_smallest():
    layers, sensitivity, full_bytes = layers_and_sensitivity()
    smallest = all_nf4_bytes(layers, full_bytes) / full_bytes
    assert plan_precisions(layers, sensitivity, full_bytes, smallest).counts() == {NF4: 3, INT8: 0, FULL: 0}
    with pytest.raises(ValueError, match=f"ref_bytes_budget to at least {smallest:.3f}"):
        plan_precisions(layers, sensitivity, full_bytes, smallest * 0.99)


def smallest_budget(checkpoint) -> float:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    return all_nf4_bytes(quantizable_layers(model), model_bytes(model)) / model_bytes(model)


def test_at_the_smallest_budget_it_is_transformers_nf4_reference(checkpoint, tokenizer, tmp_path):
    budget = smallest_budget(checkpoint) + 1e-9
    mixed = quantized_trainer(
        checkpoint, tokenizer, tmp_path / "mixed", ref_quantization="mixed", ref_bytes_budget=budget
    )
    nf4 = quantized_trainer(checkpoint, tokenizer, tmp_path / "nf4", ref_quantization="nf4")
    assert set(mixed.reference_report["plan"]["layers"].values()) == {NF4}
    assert all(
        type(mixed.ref_model.get_submodule(name)).__name__ == "Linear4bit"
        for name in mixed.reference.quantization.plan.precisions
    )
    for key in ("logp_abs_diff_mean", "logp_abs_diff_max", "token_kl_mean"):
        assert mixed.reference_report["gap"][key] == pytest.approx(nf4.reference_report["gap"][key], rel=1e-5), key


def test_at_the_whole_budget_it_is_the_full_precision_reference(checkpoint, tokenizer, tmp_path):
    trainer = quantized_trainer(checkpoint, tokenizer, tmp_path, ref_quantization="mixed", ref_bytes_budget=1.0)
    assert set(trainer.reference_report["plan"]["layers"].values()) == {FULL}
    assert trainer.reference_report["gap"]["logp_abs_diff_max"] < 1e-4


def test_between_the_ends_it_mixes_precisions_trains_and_logs_its_plan(checkpoint, tokenizer, tmp_path, caplog):
    budget = smallest_budget(checkpoint) + 0.1
    with caplog.at_level("INFO", logger="dpo_plugin"):
        trainer = quantized_trainer(checkpoint, tokenizer, tmp_path, ref_quantization="mixed", ref_bytes_budget=budget)
    plan, layers = (
        trainer.reference_report["plan"],
        quantizable_layers(AutoModelForCausalLM.from_pretrained(checkpoint)),
    )
    assert plan["bytes"] <= budget * plan["full_precision_bytes"] and set(plan["layers"]) == set(layers)
    assert len(set(plan["layers"].values())) > 1
    kinds = {INT8: "Linear8bitLt", NF4: "Linear4bit", FULL: "Linear"}
    for name, precision in plan["layers"].items():
        assert type(trainer.ref_model.get_submodule(name)).__name__ == kinds[precision], name
    assert "Mixed-precision reference within" in caplog.text and "Most sensitive in NF4" in caplog.text
    nf4 = quantized_trainer(checkpoint, tokenizer, tmp_path / "nf4", ref_quantization="nf4")
    assert 0 < trainer.reference_report["gap"]["logp_abs_diff_mean"] < nf4.reference_report["gap"]["logp_abs_diff_mean"]
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_a_second_run_reads_the_measured_sensitivities_from_the_cache(
    checkpoint, tokenizer, tmp_path, caplog, own_cache
):
    first = quantized_trainer(checkpoint, tokenizer, tmp_path / "a", ref_quantization="mixed", ref_bytes_budget=0.5)
    assert len(list((own_cache / "sensitivity").glob("*.json"))) == 1
    with caplog.at_level("INFO", logger="dpo_plugin"):
        second = quantized_trainer(
            checkpoint, tokenizer, tmp_path / "b", ref_quantization="mixed", ref_bytes_budget=0.5
        )
    assert "Layer sensitivities read from" in caplog.text
    assert second.reference_report["plan"] == first.reference_report["plan"]
    caplog.clear()
    with caplog.at_level("INFO", logger="dpo_plugin"):  # other calibration batches: measured again
        quantized_trainer(
            checkpoint, tokenizer, tmp_path / "c", make_pairs(12), ref_quantization="mixed", ref_bytes_budget=0.5
        )
    assert "Layer sensitivities read from" not in caplog.text
    assert len(list((own_cache / "sensitivity").glob("*.json"))) == 2


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (dict(ref_bytes_budget=0.0), "ref_bytes_budget must lie in (0, 1]"),
        (dict(ref_bytes_budget=1.5), "ref_bytes_budget must lie in (0, 1]"),
        (dict(ref_calibration_batches=0), "ref_calibration_batches must be an integer >= 1"),
        (dict(precompute_ref_log_probs=True), "precompute_ref_log_probs holds none"),
    ],
)
def test_bad_mixed_settings_name_the_key(tmp_path, settings, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        PreferenceConfig(output_dir=str(tmp_path), ref_quantization="mixed", **settings)


def test_a_budget_below_the_model_s_smallest_is_refused_before_measuring(checkpoint, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="below this model's smallest mixed reference"):
        quantized_trainer(checkpoint, tokenizer, tmp_path, ref_quantization="mixed", ref_bytes_budget=0.05)


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_embeddings_halve_the_tables_and_change_only_the_input_rounding_under_bf16_autocast(tokenizer, tied):
    model = make_model(len(tokenizer), hidden_size=64).eval()
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    halved = copy.deepcopy(model)
    hold_embeddings_in_bf16(halved)
    tables = (1 if tied else 2) * len(tokenizer) * 64
    assert bf16_embedding_saving(model) == 2 * tables == model_bytes(model) - model_bytes(halved)
    assert bf16_embedding_saving(halved) == 0
    assert (halved.lm_head.weight is halved.model.embed_tokens.weight) == tied
    ids = torch.randint(0, len(tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert halved.model.embed_tokens(ids).dtype == torch.float32  # the residual stream keeps its precision
        hidden = model.model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(halved.lm_head(hidden), model.lm_head(hidden), rtol=0, atol=0)  # as autocast did
        full, half = model(input_ids=ids).logits.float(), halved(input_ids=ids).logits.float()
    rounded = halved.model.embed_tokens.weight.float()
    assert 0 < (rounded - model.model.embed_tokens.weight).abs().max() <= 2**-8 * rounded.abs().max()
    assert (full - half).abs().max() < 0.05 * full.abs().max()


def test_under_bf16_autocast_the_mixed_plan_holds_the_embeddings_in_bf16_and_trains(checkpoint, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    layers, full_bytes, saved = quantizable_layers(model), model_bytes(model), bf16_embedding_saving(model)
    budget = all_nf4_bytes(layers, full_bytes, saved) / full_bytes + 1e-9  # below fp32 embeddings' smallest budget
    assert budget < all_nf4_bytes(layers, full_bytes) / full_bytes
    trainer = quantized_trainer(
        checkpoint, tokenizer, tmp_path, ref_quantization="mixed", ref_bytes_budget=budget, bf16=True
    )
    plan = trainer.reference_report["plan"]
    assert plan["bf16_embeddings"] and set(plan["layers"].values()) == {NF4}
    assert plan["bytes"] == all_nf4_bytes(layers, full_bytes, saved) <= budget * full_bytes
    reference = trainer.ref_model
    assert (
        reference.get_input_embeddings().weight.dtype
        == reference.get_output_embeddings().weight.dtype
        == torch.bfloat16
    )
    assert trainer.model.get_input_embeddings().weight.dtype == torch.float32  # the policy is untouched
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
