"""TRL's own `DPOTrainer` as a benchmark contender: the recipe's settings, TRL's nearest loss, the same data, and a
reference of the same precision as the plugin's."""

from __future__ import annotations

from dataclasses import fields

from trl import DPOConfig, DPOTrainer, get_peft_config

from ...training.recipe import load_policy
from ...training.reference import choose_reference

# The TRL loss nearest each plugin objective (TRL has no token-level DPO: `sigmoid` is DPO).
TRL_COUNTERPART = {"dpo": "sigmoid", "ipo": "ipo", "tdpo1": "sigmoid", "tdpo2": "sigmoid"}


def trl_dpo_trainer(train_pairs, model_args, args, objective: str) -> DPOTrainer:
    """TRL's DPOTrainer with `args`' DPOConfig fields, TRL's counterpart of `objective`, the recipe's policy, and
    (when the recipe builds one) the same reference checkpoint in the same quantization; otherwise TRL's own choice
    (the adapters off for PEFT, else the policy's checkpoint reloaded)."""
    config = {f.name: getattr(args, f.name) for f in fields(DPOConfig) if f.init}
    config["loss_type"] = [TRL_COUNTERPART[objective]]
    policy, tokenizer = load_policy(model_args, args.device)
    ref_model = None
    if args.builds_reference:
        ref_model = choose_reference(
            policy,
            checkpoint=args.ref_model_name_or_path,
            quantization=args.ref_quantization_settings,
            tokenizer=tokenizer,
            device=args.device,
        ).model
    return DPOTrainer(
        model=policy,
        ref_model=ref_model,
        args=DPOConfig(**config),
        train_dataset=train_pairs,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
