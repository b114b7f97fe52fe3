"""PPO recipes: TRL-style YAML (`PPOConfig`, TRL's `ModelConfig`, and where the prompts and the reward come from)
read with TRL's parser, and the `PPOTrainer` a recipe describes."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import get_peft_model
from trl import ModelConfig, get_peft_config

from ..data.loading import first_rows, load_preference_dataset
from ..training.recipe import load_policy
from ..utils.config_files import parse_config
from ..utils.devices import default_device
from ..utils.errors import UserError
from .ppo import PPOConfig, PPOTrainer


@dataclass
class PPOScriptArguments:
    """Where PPO's prompts and reward come from."""

    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The reward model (a sequence classifier with one output, e.g. trained by RewardTrainer)."},
    )
    dataset_name: str = field(
        default="sentiment-generation",
        metadata={"help": "Preference data whose string `prompt` column gives the rollout prompts."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "The split the prompts come from."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts (all when unset)."})
    reward_batch_size: int = field(default=16, metadata={"help": "Completions per reward-model call."})


def parse_ppo_recipe(argv: list[str], prog: str = "dpo-plugin ppo") -> tuple:
    """`(script_args, ppo_config, model_args)` from `--config recipe.yaml` and `--key value` overrides."""
    _, script_args, ppo_config, model_args = parse_config((PPOScriptArguments, PPOConfig, ModelConfig), argv, prog)
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (e.g. smollm2-135m-instruct, the bundled offline model).")
    return script_args, ppo_config, model_args


def training_prompts(script_args: PPOScriptArguments):
    """The rollout prompts: the `prompt` column of the dataset's training split (string prompts only)."""
    rows = first_rows(
        load_preference_dataset(script_args.dataset_name, script_args.dataset_train_split), script_args.max_prompts
    )
    if len(rows) == 0 or "prompt" not in rows.column_names:
        raise UserError(
            f"{script_args.dataset_name} ({script_args.dataset_train_split}) has no `prompt` rows to roll out from."
        )
    if not isinstance(rows[0]["prompt"], str):
        raise UserError(
            f"{script_args.dataset_name}: PPO rollouts take raw-text prompts, but the `prompt` column holds "
            "conversations; use a dataset with string prompts (e.g. sentiment-generation)."
        )
    return rows.select_columns(["prompt"])


def build_ppo_trainer(ppo_config: PPOConfig, model_args: ModelConfig, reward_fn, prompts, eval_fn=None) -> PPOTrainer:
    """The recipe's policy (LoRA adapters when `use_peft`, so the reference is the adapters off) and its trainer."""
    model, tokenizer = load_policy(model_args, default_device())
    if getattr(model, "hf_quantizer", None) is None:  # load_policy placed a quantized base already
        model = model.to(default_device())
    peft_config = get_peft_config(model_args)
    policy = get_peft_model(model, peft_config) if peft_config is not None else model
    return PPOTrainer(policy, tokenizer, reward_fn, prompts, ppo_config, eval_fn=eval_fn)
