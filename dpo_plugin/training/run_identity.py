"""What defines a training run, saved in each checkpoint (`dpo_plugin_state.json`, key `run`) and compared when a
run resumes from one: a resume continues the same run, or is refused with one line naming each changed key and
both values. `resume_allow_changes` names keys that may change (say, `learning_rate` for a deliberate schedule
change). How long the run trains (`max_steps`, `num_train_epochs`) may always change: that extends or shortens it.
"""

from __future__ import annotations

import hashlib
import json
import math

from ..trl_private import get_config_model_id
from ..utils.errors import UserError

RUN_KEYS = (
    *("loss_type", "beta", "label_smoothing", "reference_free", "ipo_normalize", "tdpo_alpha", "loss_weights"),
    *("learning_rate", "lr_scheduler_type", "weight_decay", "max_grad_norm", "seed"),
    *("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "bf16", "fp16"),
    *("ref_quantization", "ref_model_name_or_path", "precompute_ref_log_probs"),
)
DATA_SAMPLE = 64  # rows of the training data hashed into its identity, beside its length
PEFT_BOOKKEEPING = {"base_model_name_or_path", "revision", "inference_mode", "peft_version"}  # set on wrapping


def run_identity(trainer) -> dict:
    """`RUN_KEYS`, the number of processes, the model, its LoRA settings (or none) and the training data (its rows,
    and a hash of the first `DATA_SAMPLE` of them as tokenized), as JSON values."""
    args, model = trainer.args, trainer.accelerator.unwrap_model(trainer.model)
    identity = {key: getattr(args, key, None) for key in RUN_KEYS} | {"processes": trainer.accelerator.num_processes}
    identity |= {"model": get_config_model_id(model.config), "lora": lora_settings(model)}
    data = trainer.train_dataset
    sample = json.dumps(data[: min(DATA_SAMPLE, len(data))], default=str, sort_keys=True).encode()
    identity["train_data"] = f"{len(data)} rows, sha256 {hashlib.sha256(sample).hexdigest()[:16]}"
    return as_json(identity)


def lora_settings(model, peft_config=None) -> dict | None:
    """The LoRA settings of `peft_config` or of `model`'s adapters (None for a full-parameter model), without what
    PEFT fills in when it wraps a model."""
    peft_config = peft_config or getattr(model, "peft_config", {}).get("default")
    if peft_config is None:
        return None
    return {key: value for key, value in peft_config.to_dict().items() if key not in PEFT_BOOKKEEPING}


def as_json(values: dict) -> dict:
    """`values` as JSON reads them back (sets sorted, anything else unusual as its string)."""
    return json.loads(json.dumps(values, default=lambda value: sorted(value) if isinstance(value, set) else str(value)))


def differences(saved: dict, current: dict, allowed=()) -> str | None:
    """Each key whose value differs between `saved` and `current` (and is not in `allowed`), with both values; None
    when none does."""
    changed = [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    changed = [key for key in changed if key not in allowed]
    if not changed:
        return None
    return "; ".join(f"{key}: {_short(saved.get(key))} there, {_short(current.get(key))} here" for key in changed)


def check_same_run(saved: dict | None, current: dict, allowed: list[str], checkpoint: str) -> None:
    """`UserError` naming each key of `current` whose value differs from `saved` (the checkpoint's run) and is not
    in `allowed`; nothing to compare (a checkpoint from before runs recorded themselves) is accepted."""
    changed = differences(saved, current, allowed) if saved is not None else None
    if changed:
        first = changed.split(":")[0]
        raise UserError(
            f"resume_from_checkpoint {checkpoint} is a checkpoint of another run ({changed}): resume with that "
            f"run's settings, list the keys that may change in resume_allow_changes (e.g. [{first}]), or start a "
            "new run in another output_dir."
        )


def planned_steps(trainer) -> int:
    """The optimizer steps the run trains in all: `max_steps`, or the epochs' steps as `Trainer` counts them (batches
    of `per_device_train_batch_size` rows on each process, `gradient_accumulation_steps` batches a step)."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_batch = args.per_device_train_batch_size * trainer.accelerator.num_processes
    rounding = math.floor if args.dataloader_drop_last else math.ceil
    batches = rounding(len(trainer.train_dataset) / per_batch)
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
