"""`PreferenceTrainer` / `PreferenceConfig` behave as `DPOTrainer` / `DPOConfig` where TRL's own tests look: TRL's
DPO options under the default objective, TRL's `sigmoid`, the implicit-prompt and tool-call formats, and
`truncation_mode` in row validation. Each test compares with TRL itself, on the same tiny model and data."""

import logging

import pytest
from datasets import Dataset
from helpers import make_model, tiny_args
from test_trainer import TRL_KEYS, train
from trl import DPOConfig, DPOTrainer
from trl.data_utils import maybe_extract_prompt

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.data import InvalidPreferenceData, normalize_preference_dataset


def assert_same_run(ours, trl, our_logs, trl_logs, keys=TRL_KEYS):
    assert ours.step_losses == pytest.approx(trl.step_losses, abs=1e-5)
    for ours_step, trl_step in zip(our_logs, trl_logs, strict=True):
        for key in keys:
            assert ours_step[key] == pytest.approx(trl_step[key], abs=1e-5), key


@pytest.mark.parametrize(
    "options",
    [
        {"use_weighting": True},
        {"ld_alpha": 0.5},
        {"f_divergence_type": "alpha_divergence"},
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
        {"loss_type": ["dpo", "sft"], "loss_weights": [1.0, 0.5]},
        {"loss_type": ["ipo", "hinge"]},
    ],
    ids=["wpo", "ld-dpo", "f-dpo", "weighted-mixture", "dpo-in-a-mixture", "ipo-in-a-mixture"],
)
def test_a_dpo_config_trains_under_preference_config_to_the_same_numbers(options, tokenizer, pairs, tmp_path):
    """What DPOConfig accepts, PreferenceConfig accepts: TRL's options hand the plugin's default `dpo` (and `ipo`,
    length-averaged) to TRL's DPOTrainer under TRL's name for the same objective."""
    trl_options = {
        **options,
        "loss_type": [{"dpo": "sigmoid"}.get(n, n) for n in options.get("loss_type", ["sigmoid"])],
    }
    trl, trl_logs = train(DPOTrainer, tiny_args(DPOConfig, tmp_path / "trl", **trl_options), tokenizer, pairs)
    ours, our_logs = train(
        PreferenceTrainer, tiny_args(PreferenceConfig, tmp_path / "ours", **options), tokenizer, pairs
    )
    assert ours.args.plugin_loss_type is None and ours.args.loss_type == trl_options["loss_type"]
    assert_same_run(ours, trl, our_logs, trl_logs, keys=("rewards/margins", "logps/chosen", "logps/rejected"))


def test_trl_sigmoid_is_computed_by_the_plugin_to_trls_numbers(tokenizer, pairs, tmp_path, caplog):
    """`loss_type: sigmoid` alone takes the plugin's faster path (same numbers); TRL 1.16's sigmoid ignores
    label_smoothing, and so does it here, saying so."""
    with caplog.at_level(logging.WARNING, logger="dpo_plugin"):
        args = tiny_args(PreferenceConfig, tmp_path / "ours", loss_type="sigmoid", label_smoothing=0.2)
    assert "no effect on TRL's sigmoid" in caplog.text
    ours, our_logs = train(PreferenceTrainer, args, tokenizer, pairs)
    trl_args = tiny_args(DPOConfig, tmp_path / "trl", loss_type="sigmoid", label_smoothing=0.2)
    trl, trl_logs = train(DPOTrainer, trl_args, tokenizer, pairs)
    assert ours.args.plugin_loss_type == "dpo"
    assert_same_run(ours, trl, our_logs, trl_logs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss_type": "tdpo2", "use_weighting": True}, "TRL has no token-level DPO"),
        ({"label_smoothing": 0.1, "ld_alpha": 0.5}, "no label smoothing"),
        ({"loss_type": "ipo", "ipo_normalize": False, "use_weighting": True}, "length-averaged form only"),
    ],
)
def test_combinations_trl_cannot_compute_are_refused(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        tiny_args(PreferenceConfig, tmp_path, **options)


def test_implicit_prompt_strings_split_where_trl_splits_them(tokenizer, tmp_path):
    rows = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "Water boils at 100 C.", "rejected": "Water boils at 50 C."},
    ]
    ours = normalize_preference_dataset(Dataset.from_list(rows))
    assert ours.to_list() == [maybe_extract_prompt(row) for row in rows]
    assert ours[0] == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)),
        args=tiny_args(PreferenceConfig, tmp_path, max_steps=1, per_device_train_batch_size=2),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 1


def toolcall_rows() -> list[dict]:
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    prompt = [{"role": "user", "content": "Weather in Paris?"}]
    return [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "", "tool_calls": [call]}],
            "rejected": [{"role": "assistant", "content": "No idea."}],
        }
    ] * 4


def test_tool_call_turns_without_content_train_as_in_trl(tokenizer, tmp_path):
    args = tiny_args(PreferenceConfig, tmp_path / "ours", max_steps=1)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)),
        args=args,
        train_dataset=Dataset.from_list(toolcall_rows()),
        processing_class=tokenizer,
    )
    trainer.train()
    trl = DPOTrainer(
        model=make_model(len(tokenizer)),
        ref_model=make_model(len(tokenizer)),
        args=tiny_args(DPOConfig, tmp_path / "trl", max_steps=1),
        train_dataset=Dataset.from_list(toolcall_rows()),
        processing_class=tokenizer,
    )
    assert trainer.train_dataset["chosen_ids"] == trl.train_dataset["chosen_ids"]  # tokenized alike


def test_a_long_prompt_is_kept_with_keep_end_as_trl_keeps_it(tokenizer, pairs, tmp_path):
    rows = pairs.to_list()
    rows[0]["prompt"] = "x" * 80  # longer than max_length 64 on its own
    data = Dataset.from_list(rows)
    with pytest.raises(InvalidPreferenceData, match="row 0, field 'prompt': too long for max_length"):
        PreferenceTrainer(
            model=make_model(len(tokenizer)),
            args=tiny_args(PreferenceConfig, tmp_path),
            train_dataset=data,
            processing_class=tokenizer,
        )  # keep_start: TRL drops the row silently; the plugin says which (or skip_invalid_rows drops it)
    args = tiny_args(PreferenceConfig, tmp_path, truncation_mode="keep_end", max_steps=2)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)), args=args, train_dataset=data, processing_class=tokenizer
    )
    trl = DPOTrainer(
        model=make_model(len(tokenizer)),
        ref_model=make_model(len(tokenizer)),
        args=tiny_args(DPOConfig, tmp_path / "trl", truncation_mode="keep_end"),
        train_dataset=data,
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == len(trl.train_dataset) == len(rows)
    trainer.train()
    assert trainer.state.global_step == 2
