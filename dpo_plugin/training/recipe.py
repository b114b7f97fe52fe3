"""Training recipes: TRL-style YAML parsed with TRL's own parser, and the trainer a recipe describes."""

import logging
from dataclasses import dataclass, field

import torch
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, get_peft_config, get_quantization_config

from ..data.mixture import check_mixture
from ..data.model_folders import model_folder
from ..utils.config_files import parse_config
from ..utils.errors import UserError
from .config import PreferenceConfig
from .launch import LaunchArguments, is_launcher_option

logger = logging.getLogger("dpo_plugin")


@dataclass
class DataArguments(ScriptArguments, DatasetMixtureConfig):
    """What `trl dpo` reads about the data, TRL's `ScriptArguments` (dataset_name, dataset_config, splits) and
    `DatasetMixtureConfig` (a `datasets:` mixture, `test_split_size`), plus how much of the data a recipe uses.

    With `datasets`, the mixture is the data (`data/mixture.py`) and `dataset_name` is ignored, as in `trl dpo`;
    `dataset_train_split` / `dataset_test_split` name the mixture's two parts, and `max_train_pairs` and
    `heldout_eval_pairs` count pairs of those parts.
    """

    max_train_pairs: int | None = field(
        default=None, metadata={"help": "Train on the first N pairs of the training split (all when unset)."}
    )
    heldout_eval_pairs: int = field(
        default=0,
        metadata={
            "help": "After training, rank the first N pairs of `dataset_test_split` with the reference and the "
            "trained policy through PreferencePairs-v0 and report the accuracies (0: skip; `dpo-plugin eval` does "
            "this and more from the saved checkpoint)."
        },
    )
    heldout_batch_size: int = field(default=16, metadata={"help": "Pairs per batch when scoring held-out pairs."})

    def __post_init__(self):
        check_mixture(self.datasets)
        super().__post_init__()


def parse_recipe(argv: list[str], extra: tuple = (), prog: str = "dpo-plugin train") -> tuple:
    """`--config recipe.yaml` sets defaults, other `--key value` flags override them (TRL's `TrlParser`).

    Returns `(data_args, training_args, model_args, launch_args, *extra_args)`, one per dataclass in `extra`.
    """
    _, data_args, training_args, model_args, launch_args, *extra_args, launcher_flags = parse_config(
        (DataArguments, PreferenceConfig, ModelConfig, LaunchArguments, *extra), argv, prog, is_launcher_option
    )
    launch_args.launcher_flags = launcher_flags
    if not data_args.dataset_name and not data_args.datasets:
        raise UserError(
            "dataset_name is required: a local file or folder, a built-in name (sentiment-pairs), or a hub id (or a "
            "datasets: mixture, as in trl dpo recipes)."
        )
    if data_args.datasets and data_args.streaming:
        raise UserError("streaming: true is not supported: every row is checked before training; set streaming: false.")
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (e.g. smollm2-135m-instruct, the bundled offline model).")
    return (data_args, training_args, model_args, launch_args, *extra_args)


def load_policy(model_args: ModelConfig, device):
    """The policy and its tokenizer as the recipe says (quantized base for QLoRA when `load_in_4bit`/`load_in_8bit`,
    placed on `device`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..utils.quiet import quiet_int8_cast_warning

    model_path = model_folder(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    quantization = get_quantization_config(model_args)
    if model_args.load_in_8bit:
        quiet_int8_cast_warning()
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization,
        device_map={"": device} if quantization is not None else None,
    )
    return model, tokenizer


def load_split(data_args: DataArguments, split: str, seed: int):
    """One split of the recipe's data: of the `datasets` mixture when there is one (seeded by `seed`), else of
    `dataset_name`."""
    from ..data.loading import load_preference_dataset
    from ..data.mixture import load_mixture

    if not data_args.datasets:
        return load_preference_dataset(data_args.dataset_name, split, data_args.dataset_config)
    if data_args.dataset_name:
        logger.warning("The recipe sets both datasets and dataset_name: the datasets mixture is used, as in trl dpo.")
    names = (data_args.dataset_train_split, data_args.dataset_test_split)
    return load_mixture(data_args.datasets, split, data_args.test_split_size, seed, names)


def build_trainer(data_args: DataArguments, training_args: PreferenceConfig, model_args: ModelConfig):
    """The recipe's data, policy (`load_policy`) and trainer.

    Returns `(trainer, train_pairs, heldout_pairs)`; `heldout_pairs` is None when nothing needs the test split.
    """
    from ..data.loading import first_rows  # imported here: `--help` needs no `datasets`
    from .trainer import PreferenceTrainer

    train_pairs = first_rows(
        load_split(data_args, data_args.dataset_train_split, training_args.seed), data_args.max_train_pairs
    )
    heldout_pairs = None
    needs_test_split = data_args.heldout_eval_pairs > 0 or training_args.eval_strategy != "no"
    if needs_test_split:
        heldout_pairs = load_split(data_args, data_args.dataset_test_split, training_args.seed)
    model, tokenizer = load_policy(model_args, training_args.device)
    trainer = PreferenceTrainer(
        model=model,
        args=training_args,
        train_dataset=train_pairs,
        eval_dataset=heldout_pairs if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return trainer, train_pairs, heldout_pairs
