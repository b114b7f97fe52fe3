"""`dpo-plugin online` recipes: TRL-style YAML (`OnlinePreferenceConfig`, TRL's `ModelConfig`, and where the prompts
and the rewards come from) read with TRL's parser, and the `OnlinePreferenceTrainer` a recipe describes."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, get_peft_config

from ..data.loading import first_rows, load_preference_dataset
from ..training.recipe import load_policy
from ..utils.config_files import parse_config
from ..utils.errors import UserError
from ..utils.validation import check, integer_at_least, required
from .config import OnlinePreferenceConfig
from .rewards import BUILTIN_REWARDS, resolve_rewards


@dataclass
class OnlineScriptArguments:
    """Where the prompts and the rewards of `dpo-plugin online` come from."""

    dataset_name: str = field(
        default="sentiment-generation",
        metadata={"help": "Data whose string `prompt` column gives the prompts (a preference dataset's prompts)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The hub dataset's configuration."})
    dataset_train_split: str = field(default="train", metadata={"help": "The split the prompts come from."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts (all when unset)."})
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": f"The reward functions that rank the samples: built-in names ({', '.join(BUILTIN_REWARDS)}), "
            "reward-model folders (a sequence classifier with one output), or `module:function` strings naming a "
            "reward_fn(prompts, completions) -> list[float]; weighted by reward_weights."
        },
    )
    reward_batch_size: int = field(default=16, metadata={"help": "Completions per reward-model call."})

    def __post_init__(self):
        required(self, "dataset_name", "reward_funcs", hint="see recipes/online_dpo.yaml")
        check(self, {"max_prompts": integer_at_least(1), "reward_batch_size": integer_at_least(1)})


def parse_online_recipe(argv: list[str], prog: str = "dpo-plugin online", extra: tuple = ()) -> tuple:
    """`(script_args, config, model_args, *extra_args)` from `--config recipe.yaml` and `--key value` overrides, one
    more instance per dataclass of `extra`."""
    _, script_args, config, model_args, *extra_args = parse_config(
        (OnlineScriptArguments, OnlinePreferenceConfig, ModelConfig, *extra), argv, prog
    )
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (e.g. smollm2-135m-instruct, the bundled offline model).")
    return (script_args, config, model_args, *extra_args)


def recipe_prompts(script_args: OnlineScriptArguments):
    """The recipe's prompts: the `prompt` column of its dataset's training split (the first `max_prompts`)."""
    split, dataset_config = script_args.dataset_train_split, script_args.dataset_config
    rows = load_preference_dataset(script_args.dataset_name, split, dataset_config)
    return first_rows(rows, script_args.max_prompts).select_columns(["prompt"])


def build_online_trainer(script_args: OnlineScriptArguments, config: OnlinePreferenceConfig, model_args: ModelConfig):
    """The recipe's prompts, policy (`load_policy`; LoRA adapters when `use_peft`), rewards and trainer."""
    from .trainer import OnlinePreferenceTrainer

    prompts = recipe_prompts(script_args)
    model, tokenizer = load_policy(model_args, config.device)
    rewards = resolve_rewards(script_args.reward_funcs, tokenizer, script_args.reward_batch_size, config.max_length)
    return OnlinePreferenceTrainer(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
