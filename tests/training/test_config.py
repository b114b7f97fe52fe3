"""PreferenceConfig rejects invalid settings at construction, naming the field and the valid values."""

import pytest

from dpo_plugin.training.config import PreferenceConfig


def config(**overrides):
    return PreferenceConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss_type": "dpo2"}, r"loss_type \['dpo2'\] is not known\. Valid values: dpo, ipo, tdpo1, tdpo2, sigmoid"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"label_smoothing": 0.5}, r"label_smoothing must lie in \[0, 0.5\)"),
        ({"label_smoothing": -0.1}, r"label_smoothing must lie in \[0, 0.5\)"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing .* applies to loss_type 'dpo' only"),
        ({"loss_type": "tdpo2", "tdpo_alpha": -0.5}, "tdpo_alpha must be a finite number >= 0"),
        ({"loss_type": "tdpo1", "precompute_ref_log_probs": True}, "precompute_ref_log_probs cannot be used"),
        ({"loss_type": "tdpo2", "precompute_ref_log_probs": True}, "precompute_ref_log_probs: false"),
        ({"loss_type": "ipo", "reference_free": True}, "reference_free applies to loss_type 'dpo' only"),
        ({"reference_free": True, "precompute_ref_log_probs": True}, "nothing to compute with reference_free"),
        ({"num_train_epochs": 0}, "num_train_epochs: 0 with max_steps unset trains no step"),
        ({"beta": None}, "beta must be a number; got None"),
        ({"tdpo_alpha": [0.5]}, r"tdpo_alpha must be a finite number >= 0; got \[0.5\]"),
        ({"ipo_normalize": "yes"}, "ipo_normalize must be true or false; got 'yes'"),
        ({"skip_invalid_rows": None}, "skip_invalid_rows must be true or false; got None"),
        ({"save_steps": -5}, "save_steps must be > 0"),
        ({"logging_steps": 0}, "logging_steps must be > 0"),
    ],
)
def test_invalid_settings_raise_with_the_field_named(overrides, message):
    """(TRL's options beside a plugin objective are in test_trl_compatibility.py: TRL computes them.)"""
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_plugin_objectives_are_selected():
    assert config().plugin_loss_type == "dpo"
    assert config(loss_type="tdpo2").plugin_loss_type == "tdpo2"
    assert config(loss_type="ipo").ipo_normalize is True  # the documented default: length-averaged IPO


def test_trl_loss_names_are_left_to_trl():
    settings = config(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    assert settings.plugin_loss_type is None
    assert settings.loss_type == ["sigmoid", "sft"]
