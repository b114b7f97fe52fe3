"""Every private or internal member of TRL and transformers that the plugin relies on, in one place.

Read this before moving the TRL pin (`pyproject.toml`: `trl>=1.16,<1.17`). Functions are imported here and
nowhere else; methods the trainer overrides and attributes it reads are listed in `OVERRIDDEN_METHODS` and
`TRAINER_ATTRIBUTES`, and `tests/test_trl_private.py` checks that each still exists with the arguments the plugin
calls it with, so a release that renames one fails there first, by name.

TRL 1.16 (`trl/trainer/dpo_trainer.py`, `trl/trainer/utils.py`, `trl/models/utils.py`, `trl/data_utils.py`):

- `DPOTrainer.__init__(model, ref_model, args, data_collator, ...)`: overridden; called by keyword with the
  reference the plugin chose, so a renamed or removed parameter fails the contract test, not a user's run.
- `DPOTrainer._compute_loss(model, inputs, return_outputs)`: overridden; the plugin objectives.
- `DPOTrainer.compute_ref_log_probs(model, inputs)`: overridden; reference log-probs, live and precomputed.
- `DPOTrainer._metrics`, `_total_train_tokens`, `_tp_size` (set in `__init__`): TRL's metric keys are logged
  through them; the token count is saved in checkpoints and restored on resume.
- `DPOTrainer.aux_loss_enabled`, `router_aux_loss_coef`, `precompute_ref_logps` (set in `__init__`): read as
  TRL's own loss reads them. `DPOTrainer._tag_names`: extended with "dpo_plugin" for the model card.
- `trl.data_utils._tokenize`: held-out text is tokenized exactly as `DPOTrainer` tokenizes it.
- `trl.trainer.utils.create_model_from_path`, `get_config_model_id`, `use_adapter`: build a policy given by name,
  name a model's checkpoint, switch a PEFT policy's adapters off for the reference.
- `trl.models.utils.disable_gradient_checkpointing`: the reference pass runs without it, as TRL's does.
- `DPOTrainer.__init__` wraps the policy's (a PEFT policy's base model's) and the reference's `forward` with its
  fused LM head (`trl.trainer.utils.add_fused_lm_head`: an instance attribute `forward` around the previous one), so
  a trainer built per on-policy round would stack one wrapper per round: `forward_restored` puts each back.
- `REF_ADAPTER`: given a PEFT policy and no reference, `DPOTrainer.__init__` copies its adapters into an adapter of
  this name and uses it as the reference (`use_adapter` selects it).

transformers 5 (`transformers/trainer.py`, `transformers/configuration_utils.py`):

- `Trainer._save_checkpoint(model, trial)`, `_get_output_dir(trial)`: overridden; checkpoints are written into a
  staging folder and renamed into place whole.
- `Trainer._load_optimizer_and_scheduler(checkpoint)`: overridden; restores the token count on resume.
- `Trainer._save(output_dir, state_dict)`: overridden; a mixed reference's plan is saved beside the weights.
- `Trainer._globalstep_last_logged`: where the current logging window began, to log the mean loss of the steps that
  ran when some were skipped.
- `PretrainedConfig._name_or_path` (through `get_config_model_id`) and `_attn_implementation` (shared-prompt
  packing checks the attention implementation).
"""

import contextlib

from trl.data_utils import _tokenize
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import create_model_from_path, get_config_model_id, use_adapter

__all__ = [
    "OVERRIDDEN_METHODS",
    "TRAINER_ATTRIBUTES",
    "create_model_from_path",
    "disable_gradient_checkpointing",
    "REF_ADAPTER",
    "forward_restored",
    "get_config_model_id",
    "tokenize_as_trl",
    "use_adapter",
]

tokenize_as_trl = _tokenize
REF_ADAPTER = "ref"


@contextlib.contextmanager
def forward_restored(*models):
    """Each of `models` (None skipped) has, after the block, the `forward` it had before it: what a `DPOTrainer` built
    inside patched in (its fused LM head) is taken out again."""
    saved = [(model, model.__dict__.get("forward")) for model in models if model is not None]
    try:
        yield
    finally:
        for model, forward in saved:
            if forward is None:
                model.__dict__.pop("forward", None)
            else:
                model.forward = forward


# method -> the parameter names the plugin's override has (and passes on to `super()`).
OVERRIDDEN_METHODS = {
    "__init__": (
        "model",
        "ref_model",
        "args",
        "data_collator",
        "train_dataset",
        "eval_dataset",
        "processing_class",
        "compute_metrics",
        "callbacks",
        "optimizers",
        "quantization_config",
        "peft_config",
    ),
    "_compute_loss": ("model", "inputs", "return_outputs"),
    "compute_ref_log_probs": ("model", "inputs"),
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "_load_optimizer_and_scheduler": ("checkpoint",),
    "_save": ("output_dir", "state_dict"),
}
# attributes of a `DPOTrainer` (class attributes, or set in its `__init__`) that the plugin reads.
TRAINER_ATTRIBUTES = (
    "_tag_names",
    "_metrics",
    "_total_train_tokens",
    "_tp_size",
    "aux_loss_enabled",
    "router_aux_loss_coef",
    "precompute_ref_logps",
    "_globalstep_last_logged",
)
