"""`dpo-plugin online` recipes: TRL-style YAML (`OnlinePreferenceConfig`, TRL's `ModelConfig`, and where the prompts
and the rewards come from) read with TRL's parser, and the `OnlinePreferenceTrainer` a recipe describes."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, get_peft_config

from ..data.loading import first_rows, load_prompt_dataset
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
    dataset_test_split: str = field(default="test", metadata={"help": "The split the held-out prompts come from."})
    eval_prompts: int = field(
        default=0,
        metadata={
            "help": "Held-out prompts (the first N of dataset_test_split) each sampled once before the first round "
            "and after each: their mean reward and KL to the start (0: no held-out evaluation)."
        },
    )
    eval_reward_funcs: list[str] = field(
        default_factory=list,
        metadata={"help": "The rewards of the held-out evaluation, as reward_funcs (default: reward_funcs)."},
    )

    def __post_init__(self):
        required(self, "dataset_name", "reward_funcs", hint="see recipes/online_dpo.yaml")
        counts = {"max_prompts": integer_at_least(1), "reward_batch_size": integer_at_least(1)}
        check(self, counts | {"eval_prompts": integer_at_least(0, "(0: no held-out evaluation)")})


def parse_online_recipe(argv: list[str], prog: str = "dpo-plugin online", extra: tuple = ()) -> tuple:
    """`(script_args, config, model_args, *extra_args)` from `--config recipe.yaml` and `--key value` overrides, one
    more instance per dataclass of `extra`."""
    _, script_args, config, model_args, *extra_args = parse_config(
        (OnlineScriptArguments, OnlinePreferenceConfig, ModelConfig, *extra), argv, prog
    )
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (e.g. smollm2-135m-instruct, the bundled offline model).")
    config.check_sampler()
    return (script_args, config, model_args, *extra_args)


def recipe_prompts(script_args: OnlineScriptArguments, split: str, count: int | None):
    """The first `count` rows (all: None) of one split of the recipe's dataset: a prompt-only dataset (its other
    columns kept for the reward functions), or a preference dataset's prompts."""
    rows = load_prompt_dataset(script_args.dataset_name, split, script_args.dataset_config)
    return first_rows(rows, count)


def build_online_trainer(
    script_args: OnlineScriptArguments, config: OnlinePreferenceConfig, model_args: ModelConfig, eval_fn=None
):
    """The recipe's prompts, policy (`load_policy`; LoRA adapters when `use_peft`), rewards and trainer; `eval_fn`
    as `OnlinePreferenceTrainer` takes it."""
    from .trainer import OnlinePreferenceTrainer

    prompts = recipe_prompts(script_args, script_args.dataset_train_split, script_args.max_prompts)
    eval_prompts = None
    if script_args.eval_prompts:
        eval_prompts = recipe_prompts(script_args, script_args.dataset_test_split, script_args.eval_prompts)
    model, tokenizer = load_policy(model_args, config.device)
    resolve = lambda specs: resolve_rewards(specs, tokenizer, script_args.reward_batch_size, config.max_length)  # noqa: E731
    return OnlinePreferenceTrainer(
        model=model,
        reward_funcs=resolve(script_args.reward_funcs),
        args=config,
        train_dataset=prompts,
        eval_dataset=eval_prompts,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        eval_reward_funcs=resolve(script_args.eval_reward_funcs) if script_args.eval_reward_funcs else None,
        eval_fn=eval_fn,
    )
