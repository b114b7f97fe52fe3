"""`OnlinePreferenceTrainer`: on-policy (iterative) DPO, IPO and TDPO, shaped like TRL's `OnlineDPOTrainer`.

Each round: the policy samples `samples_per_prompt` completions of each round's prompts through the grouped
`Completion-v0` environment (`rollout.py`), the reward functions rank them there, each group becomes pairs
(`pairs.py`), and a `PreferenceTrainer` trains `epochs_per_round` passes over them against the round's reference
(every objective, the chunked head, packing, LoRA and quantized references). Round r draws everything from
`seed + r` (prompts, samples, pair partners, training), and ends with its policy saved whole in
`output_dir/round-<r>`, so a stopped run resumes at the next round exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from peft import get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
    TrainerState,
    set_seed,
)

from ..evaluation.evaluator import HeldoutEvaluator
from ..evaluation.policies import PURE_SAMPLING, CompletionSampler
from ..evaluation.rollout import Rollout, prompt_rows, prompt_texts, sample_groups
from ..evaluation.scoring import SequenceScorer, sampled_log_ratios
from ..training.interruption import StopSignals
from ..training.reference import frozen_copy
from ..training.run_identity import as_json, differences, lora_settings
from ..training.trainer import PreferenceTrainer
from ..trl_private import REF_ADAPTER, create_model_from_path, forward_restored, get_config_model_id
from ..utils.atomic import staged_folder, write_json
from ..utils.errors import ConfigError, UserError
from ..utils.modes import in_eval_mode
from .config import OnlinePreferenceConfig
from .pairs import group_pairs
from .rewards import trl_reward_functions, with_trainer_state

logger = logging.getLogger("dpo_plugin")

ROUND_FILE = "round.json"  # a round folder's metrics; written last, so its presence marks the round complete
RUN_FILE = "run.json"  # in each round folder: what defines the run, compared when a rerun resumes it
# the config keys that define a run: a rerun that resumes it must have the same (more `rounds` extends it)
RUN_KEYS = (
    *("loss_type", "beta", "label_smoothing", "reference_free", "ipo_normalize", "tdpo_alpha", "loss_weights"),
    *("prompts_per_round", "samples_per_prompt", "pair_rule", "min_reward_margin", "reward_weights"),
    "missing_eos_penalty",
    *("epochs_per_round", "reference_update", "ref_model_name_or_path", "ref_quantization", "learning_rate"),
    *("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "seed", "bf16"),
)
START_EVAL_FILE = "start_eval.json"  # the held-out evaluation before the first round
TRAINING_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class OnlinePreferenceTrainer:
    """Train `model` on-policy: `reward_funcs` rank its samples of the prompts of `train_dataset` (a `prompt` column,
    strings or conversations; its other columns go to the reward functions), round after round
    (`OnlinePreferenceConfig`). The arguments are `OnlineDPOTrainer`'s, in its order (`docs/online.md`): reward
    functions called as TRL calls them (`reward_fn(prompts=..., completions=..., completion_ids=..., **columns)`, or
    `reward_fn(prompts, completions)`), reward models with `reward_processing_classes`, a list of these or a
    `{name: fn}` mapping, weighted by `args.reward_weights`; `data_collator`, `compute_metrics`, `optimizers` and
    `preprocess_logits_for_metrics` are refused (each round trains a fresh `PreferenceTrainer`).

    `ref_model`: an explicit fixed reference; default the initial policy (a LoRA policy's base, adapters off; a
    full-parameter policy's frozen copy), or what the config's `ref_*` keys load. `self.rounds` holds each round's
    metrics; `train()` returns them.

    Held-out evaluation, before the first round (`self.start_eval`) and after each (`eval/*` in its metrics): with
    `eval_dataset` (prompts), one completion sampled per prompt (seed 0 every time), its mean reward under
    `eval_reward_funcs` (default `reward_funcs`) and KL(π_θ ‖ π_0) with their standard errors; or whatever
    `eval_fn(policy, round) -> dict` returns (round −1 before the first).
    """

    def __init__(
        self,
        model,
        ref_model: torch.nn.Module | None = None,
        reward_funcs=None,
        args: OnlinePreferenceConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class=None,
        reward_processing_classes=None,
        peft_config=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        preprocess_logits_for_metrics=None,
        eval_reward_funcs=None,
        eval_fn: Callable[[torch.nn.Module, int], dict] | None = None,
    ):
        self.model_id = model_id = model if isinstance(model, str) else get_config_model_id(model.config)
        if args is None:
            args = OnlinePreferenceConfig(f"{model_id.split('/')[-1]}-OnlineDPO")
        if not isinstance(args, OnlinePreferenceConfig):
            raise ConfigError(
                f"args is a {type(args).__name__}: OnlinePreferenceTrainer takes a dpo_plugin.OnlinePreferenceConfig."
            )
        args.check_sampler()
        if ref_model is not None and ref_model is model:
            raise ConfigError(
                "model and ref_model are the same object: omit ref_model (the reference is then the initial policy)."
            )
        if ref_model is not None and args.reference_update != "fixed":
            raise ConfigError("A ref_model passed in is a fixed reference: set reference_update: fixed.")
        unsupported = {
            "data_collator": data_collator is not None,
            "compute_metrics": compute_metrics is not None,
            "optimizers": tuple(optimizers) != (None, None),
            "preprocess_logits_for_metrics": preprocess_logits_for_metrics is not None,
        }
        if any(unsupported.values()):
            names = ", ".join(name for name, given in unsupported.items() if given)
            raise ConfigError(
                f"{names}: OnlinePreferenceTrainer trains each round with a fresh PreferenceTrainer and takes none of "
                "these; leave them unset (each round's optimizer is built from args)."
            )
        self.args = args
        self.processing_class = self.tokenizer = processing_class or AutoTokenizer.from_pretrained(model_id)
        resolve = functools.partial(
            trl_reward_functions,
            tokenizer=self.tokenizer,
            batch_size=args.per_device_eval_batch_size,
            max_length=args.max_length,
        )
        self.rewards = resolve(reward_funcs, reward_processing_classes)
        self.reward_funcs, self.reward_func_names = list(self.rewards.values()), list(self.rewards)
        self.reward_weights = _reward_weights(args.reward_weights, len(self.rewards))
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.prompt_rows = prompt_rows(train_dataset, self.tokenizer)
        if eval_fn is None and eval_dataset is not None:
            eval_rewards = resolve(eval_reward_funcs, None) if eval_reward_funcs else self.rewards
            named = eval_dataset if isinstance(eval_dataset, Mapping) else {"": eval_dataset}
            prompts = {name: prompt_texts(dataset, self.tokenizer) for name, dataset in named.items()}
            eval_fn = HeldoutSampling(self, prompts, eval_rewards)
        self.eval_fn = eval_fn
        self.use_vllm = False  # the config refuses use_vllm: the policy samples with generate()
        self.generation_config = GenerationConfig(**(PURE_SAMPLING | args.generation))
        if isinstance(model, str):
            model = create_model_from_path(model, **(args.model_init_kwargs or {}))
        if peft_config is not None:
            if is_peft_model(model):
                raise ConfigError(
                    "model already has PEFT adapters and peft_config asks for new ones: pass the adapters' base model "
                    "with peft_config, or the PEFT model alone (its adapters then train), as TRL requires."
                )
            set_seed(args.seed)  # the adapters' initial weights, drawn as TRL's trainer draws them for this seed
            model = get_peft_model(model, peft_config)
        self.model = model.to(args.device)
        self.peft_config, self.callbacks = peft_config, callbacks
        lora = is_peft_model(self.model)
        # π_0, the policy as passed, held once (model, context): what the KL of every round's samples is measured
        # against, and the fixed reference; a LoRA policy's base (its adapters off), a full-parameter policy's copy
        self.start = (self.model, self._base_context) if lora else (frozen_copy(self.model), self._autocast)
        if ref_model is None and not lora and not args.builds_reference:
            ref_model = self.start[0]
        self.ref_model = ref_model
        # `previous_round`: each round's reference is the policy as the round starts; a LoRA policy's is TRL's own
        # copy of its adapters (the `ref` adapter `DPOTrainer` adds), a full-parameter policy's a frozen copy
        self.copies_policy_as_reference = args.reference_update == "previous_round" and not lora
        self.load_round_policy = _load_adapters if lora else _load_weights  # what a round folder holds
        self.rounds: list[dict] = []
        self.state = TrainerState()  # TRL's record of the run: each round's metrics, then the run's summary
        self.ranking = with_trainer_state(self.rewards, self.state)  # what ranks each round's samples
        self.start_eval: dict | None = None  # the held-out evaluation before the first round
        self.interrupted_by: int | None = None  # the signal that stopped the last `train()`

    def train(self) -> list[dict]:
        """Every round not yet complete in `output_dir` (the ones that are resume the run: their policy is loaded
        and their metrics kept). SIGTERM/SIGINT stop the run at the end of the unit of work in progress (a sampling
        call, an optimizer step; the held-out evaluation and the round's save finish), with every round not saved
        whole left out (`interrupted_by`); running again resumes after the last saved round, exactly."""
        first = self._resume()
        started = time.perf_counter()
        with StopSignals() as self._stop:
            if first == 0 and self.eval_fn is not None:
                self.start_eval = self.eval_fn(self.model, -1)
                write_json(Path(self.args.output_dir) / START_EVAL_FILE, self.start_eval)
            rounds = range(first, self.args.rounds)
            for index in tqdm(rounds, desc="Rounds", unit="round", disable=self.args.disable_tqdm or not rounds):
                if self._stop.received is not None or self._steps_left() == 0:
                    break
                metrics = self._round(index)
                if metrics is None:  # stopped within the round, which is not saved
                    break
                self.rounds.append(metrics)
                self._log(metrics)
        self.interrupted_by = self._stop.received
        if self.interrupted_by is None:
            self._log_summary(time.perf_counter() - started)
        return self.rounds

    def _steps_left(self) -> int | None:
        """Optimizer steps left under `max_steps` (None when unset): the run ends at `rounds` rounds or `max_steps`
        optimizer steps in all, whichever comes first."""
        return max(self.args.max_steps - self.state.global_step, 0) if self.args.max_steps > 0 else None

    def _log(self, metrics: dict) -> None:
        """A round's metrics into `state.log_history`, at the optimizer steps trained so far (as TRL logs)."""
        self.state.global_step += metrics.get("steps", 0)
        self.state.log_history.append({**metrics, "step": self.state.global_step})

    def _log_summary(self, seconds: float) -> None:
        """The run's last `log_history` entry, as `Trainer.train` ends it: `train_loss` (the mean loss over every
        optimizer step of every round; NaN when no round had a pair), `train_runtime`, `step`."""
        steps = [(entry["loss"], entry["steps"]) for entry in self.rounds if entry.get("steps")]
        loss = sum(value * count for value, count in steps) / sum(count for _, count in steps) if steps else math.nan
        summary = {"train_runtime": round(seconds, 2), "train_loss": loss, "step": self.state.global_step}
        self.state.log_history.append(summary | {"rounds": len(self.rounds)})

    def save_model(self, folder: str | Path) -> None:
        """The policy (LoRA: its adapters) and tokenizer, published whole in `folder`."""
        with staged_folder(Path(folder)) as staging:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)

    # ----------------------------------------------------------------------------------------------------------------
    # One round: sample → rank → pairs → train.

    def _round(self, index: int) -> dict | None:
        """Round `index`, saved whole; its metrics, or None when SIGTERM/SIGINT stopped it (nothing of it kept)."""
        args, seed = self.args, self.args.seed + index
        ref_model = self._round_reference(index)
        samples = self._sample(self._round_rows(index), seed)
        if self._stop.received is not None:
            return None
        rng = np.random.default_rng(seed)
        rows, tied = [], 0
        for group in samples.groups:
            pairs = group_pairs(group.rewards, args.pair_rule, args.min_reward_margin, rng)
            tied += not pairs
            rows += [
                {"prompt": group.prompt, "chosen": group.completions[c], "rejected": group.completions[r]}
                for c, r in pairs
            ]
        metrics = {"round": index, **_sample_metrics(samples, self.tokenizer.eos_token_id)}
        metrics |= {"pairs": len(rows), "groups/tie_fraction": tied / len(samples.groups)}
        metrics["kl"] = self._kl_to_initial(samples)
        if self._stop.received is not None:
            return None
        started = time.perf_counter()
        if rows:
            trained = self._train_on(Dataset.from_list(rows), ref_model, seed)
            if trained is None:
                return None
            metrics |= trained
        else:
            logger.warning("Round %d: every group tied, so no pairs: the policy is not trained this round.", index)
        metrics["time/training"] = round(time.perf_counter() - started, 2)
        if self.eval_fn is not None:
            started = time.perf_counter()
            metrics |= {f"eval/{key}": value for key, value in self.eval_fn(self.model, index).items()}
            metrics["time/evaluation"] = round(time.perf_counter() - started, 2)
        self._save_round(index, metrics)
        return metrics

    def _round_rows(self, index: int) -> list[dict]:
        """Round `index`'s prompt rows: the next `prompts_per_round` of one shuffled pass over the rows (seeded by
        `seed`), wrapping around."""
        order = np.random.default_rng(self.args.seed).permutation(len(self.prompt_rows))
        start = index * self.args.prompts_per_round
        return [self.prompt_rows[order[i % len(order)]] for i in range(start, start + self.args.prompts_per_round)]

    def _sample(self, rows: list[dict], seed: int) -> Rollout:
        with in_eval_mode(self.model) as policy:
            sampler = CompletionSampler(policy, self.tokenizer, self.args.generation, self._autocast)
            return sample_groups(
                sampler,
                rows,
                self.ranking,
                self.args.samples_per_prompt,
                self.args.sampling_batch_size,
                seed,
                reward_weights=dict(zip(self.rewards, self.args.reward_weights, strict=True))
                if self.args.reward_weights
                else None,
                missing_eos_penalty=self.args.missing_eos_penalty,
                progress=not self.args.disable_tqdm,
                should_stop=lambda: self._stop.received is not None,
            )

    def _round_reference(self, index: int) -> torch.nn.Module | None:
        """The `ref_model` of round `index`'s `PreferenceTrainer` (None: it chooses, see `copies_policy_as_reference`):
        `fixed`, π_0 (or the `ref_model` passed in; None for a LoRA policy, whose base with its adapters off is its
        trainer's reference once the `ref` adapter is dropped); `previous_round`, the policy as the round starts."""
        return frozen_copy(self.model) if self.copies_policy_as_reference else self.ref_model

    def _kl_to_initial(self, samples: Rollout) -> float:
        """Mean over the round's samples of log π_θ(y|x) − log π_0(y|x), π_0 the initial policy, scored on exactly
        the sampled tokens (no padding): the KL axis of the reward–KL frontier, whatever the reference schedule."""
        prompt_ids = [group.prompt_ids for group in samples.groups for _ in group.completion_ids]
        completion_ids = [ids for group in samples.groups for ids in group.completion_ids]
        batch = self.args.sampling_batch_size * self.args.samples_per_prompt
        policy = SequenceScorer(self.model, self.tokenizer, None, batch, self._autocast)
        start = SequenceScorer(self.start[0], self.tokenizer, None, batch, self.start[1])
        with in_eval_mode(self.model):
            return sampled_log_ratios(policy, start, prompt_ids, completion_ids).mean().item()

    def _train_on(self, pairs: Dataset, ref_model: torch.nn.Module | None, seed: int) -> dict | None:
        """`epochs_per_round` passes of a `PreferenceTrainer` over the round's pairs: its loss averaged over its
        optimizer steps, the mean of its logged reward metrics and its step count; None when SIGTERM/SIGINT stopped
        it (at the end of an optimizer step). It writes nothing (no saves, no reports) and leaves the models' `forward`
        as it found it."""
        args = dataclasses.replace(
            self.args,
            save_on_interrupt=False,  # the run's own signal handling stops the round (`StopTraining`)
            num_train_epochs=self.args.epochs_per_round,
            max_steps=-1,
            save_strategy="no",
            seed=seed,
            data_seed=seed,
            report_to="none",
        )
        _drop_ref_adapter(self.model)  # last round's reference; TRL adds this round's copy
        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model  # what TRL patches
        with forward_restored(policy, ref_model):
            trainer = PreferenceTrainer(
                model=self.model,
                ref_model=ref_model,
                args=args,
                train_dataset=pairs,
                processing_class=self.tokenizer,
                callbacks=self.callbacks,
            )
            if self.args.reference_update == "fixed":
                _drop_ref_adapter(trainer.accelerator.unwrap_model(trainer.model))  # the base, not TRL's copy
            for printing in (ProgressCallback, PrinterCallback):  # a bar of the round's steps, not a line per step
                trainer.remove_callback(printing)
            trainer.add_callback(StepBar(disable=self.args.disable_tqdm))
            steps_left = self._steps_left()
            trainer.add_callback(
                StopTraining(
                    lambda step: self._stop.received is not None or (steps_left is not None and step >= steps_left)
                )
            )
            output = trainer.train()
        self.model = trainer.accelerator.unwrap_model(trainer.model)
        if self._stop.received is not None:
            return None
        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        return {
            key: statistics.fmean(entry[key] for entry in logged if key in entry)
            for key in TRAINING_KEYS
            if any(key in entry for entry in logged)
        } | {"loss": output.training_loss, "steps": trainer.state.global_step}

    def _base_context(self):
        """A LoRA policy's base: the training precision, its adapters off."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._autocast())
        stack.enter_context(self.model.disable_adapter())
        return stack

    def _autocast(self):
        device_type = torch.device(self.args.device).type
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bool(self.args.bf16))

    # ----------------------------------------------------------------------------------------------------------------
    # Rounds saved whole, and resumed.

    def _save_round(self, index: int, metrics: dict) -> None:
        """The round's policy (LoRA: its adapters) and metrics, published whole as `output_dir/round-<index>`."""
        with staged_folder(Path(self.args.output_dir) / f"round-{index}") as staging:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            write_json(staging / RUN_FILE, self._run_identity())
            write_json(staging / ROUND_FILE, metrics)

    def _run_identity(self) -> dict:
        """What defines this run (`RUN_KEYS`, the sampling settings, the model, its LoRA settings, the reward
        functions and the prompts), as JSON values."""
        identity = {key: getattr(self.args, key) for key in RUN_KEYS} | {"generation": self.args.generation}
        lora = lora_settings(self.model, self.peft_config)
        identity |= {"model": self.model_id, "lora": lora, "reward_funcs": list(self.rewards)}
        prompts = json.dumps([row["prompt"] for row in self.prompt_rows]).encode()
        identity["prompts"] = f"{len(self.prompt_rows)} prompts, sha256 {hashlib.sha256(prompts).hexdigest()[:16]}"
        return as_json(identity)

    def _resume(self) -> int:
        """The first round to run: after the last complete `round-<r>` folder in `output_dir`, whose policy is
        loaded and whose metrics (and those of the rounds before it) are kept, once its `run.json` shows the same
        run (`UserError` naming each changed key otherwise); 0 when there is none."""
        folder = Path(self.args.output_dir)
        done = sorted(int(path.name.split("-")[1]) for path in folder.glob("round-*") if (path / ROUND_FILE).is_file())
        if not done:
            return 0
        missing = sorted(set(range(done[-1] + 1)) - set(done))
        if missing or done[-1] >= self.args.rounds:
            raise UserError(
                f"{folder} holds rounds {done} of another run (rounds {missing} missing, or more than rounds="
                f"{self.args.rounds}): give a new output_dir, or the output_dir of this run."
            )
        self._check_same_run(folder / f"round-{done[-1]}")
        self.rounds = [json.loads((folder / f"round-{r}" / ROUND_FILE).read_text()) for r in done]
        for metrics in self.rounds:
            self._log(metrics)
        if (folder / START_EVAL_FILE).is_file():
            self.start_eval = json.loads((folder / START_EVAL_FILE).read_text())
        self.load_round_policy(self.model, folder / f"round-{done[-1]}")
        if done[-1] + 1 == self.args.rounds:
            logger.info("All %d rounds are complete in %s: nothing to train.", self.args.rounds, folder)
        else:
            logger.info("Resuming after round %d of %d from %s.", done[-1], self.args.rounds, folder)
        return done[-1] + 1

    def _check_same_run(self, round_folder: Path) -> None:
        """`UserError` naming each key whose value differs from the run that saved `round_folder`."""
        saved_file = round_folder / RUN_FILE
        if not saved_file.is_file():
            raise UserError(
                f"{round_folder.parent} holds rounds written before runs recorded their settings ({RUN_FILE}), so "
                "whether this recipe is theirs cannot be checked: give a new output_dir."
            )
        changed = differences(json.loads(saved_file.read_text()), self._run_identity())
        if changed:
            raise UserError(
                f"{round_folder.parent} holds rounds of another run ({changed}): give a new output_dir, or the recipe "
                "of that run to resume it."
            )


class HeldoutSampling:
    """`trainer`'s built-in held-out evaluation: one completion of each prompt of each named prompt list sampled
    from its policy (seed 0 every call: rounds differ by the policy, not the draw), the mean of each of `rewards` and
    KL(π_θ ‖ π_0), each with its standard error over the prompts (`<key>_se`); the keys of a list named `name`
    (an `eval_dataset` mapping's key; "" for a single dataset) start with `name/`."""

    def __init__(
        self, trainer: OnlinePreferenceTrainer, prompts: Mapping[str, list[str]], rewards: Mapping[str, Callable]
    ):
        self.trainer, self.prompts, self.rewards = trainer, prompts, rewards

    def __call__(self, policy: torch.nn.Module, round_index: int) -> dict:
        return {
            (f"{name}/{key}" if name else key): value
            for name, prompts in self.prompts.items()
            for key, value in self._evaluate(policy, prompts).items()
        }

    def _evaluate(self, policy: torch.nn.Module, prompts: list[str]) -> dict:
        trainer = self.trainer
        args = trainer.args
        rows = args.sampling_batch_size * args.samples_per_prompt  # the round's rows a call, sampled and scored
        evaluator = HeldoutEvaluator((policy, trainer._autocast), trainer.start, trainer.tokenizer, rows)
        report = evaluator.samples(prompts, self.rewards, args.generation, seed=0)
        values = {**{f"reward/{name}": value for name, value in report.rewards.items()}, "kl": report.kl}
        names = {**{name: f"reward/{name}" for name in report.rewards}, "kl": "kl"}
        return values | {f"{names[key]}_se": error for key, error in report.standard_errors.items()}


class StopTraining(TrainerCallback):
    """Ends a round's training at the end of the optimizer step after which `should_stop(step)` holds (a signal
    arrived; what is left of `max_steps` is reached)."""

    def __init__(self, should_stop: Callable[[int], bool]):
        self.should_stop = should_stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_stop(state.global_step):
            control.should_training_stop = True


class StepBar(TrainerCallback):
    """A progress bar over a round's optimizer steps, without the per-step log lines transformers prints."""

    def __init__(self, disable: bool):
        self.disable = disable

    def on_train_begin(self, args, state, control, **kwargs):
        bar = {"desc": "Training on the pairs", "unit": "step", "leave": False, "disable": self.disable}
        self.bar = tqdm(total=state.max_steps, **bar)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def _load_adapters(model, round_folder: Path) -> None:
    """The LoRA adapters saved in `round_folder`, loaded into the PEFT `model`."""
    set_peft_model_state_dict(model, load_file(round_folder / "adapter_model.safetensors"))


def _load_weights(model, round_folder: Path) -> None:
    """The full-parameter policy saved in `round_folder`, loaded into `model`."""
    model.load_state_dict(AutoModelForCausalLM.from_pretrained(round_folder, dtype=model.dtype).state_dict())


def _drop_ref_adapter(model) -> None:
    """Delete a PEFT policy's `ref` adapter, if it has one: its reference is then its base, adapters off."""
    if is_peft_model(model) and REF_ADAPTER in model.peft_config:
        model.delete_adapter(REF_ADAPTER)


def _sample_metrics(samples: Rollout, eos_id: int | None) -> dict:
    """The round's samples: reward mean and std, the mean reward spread within groups, completion length (tokens)
    and the fraction ending in EOS, and the seconds spent sampling and ranking."""
    rewards = [reward for group in samples.groups for reward in group.rewards]
    lengths = [len(ids) for group in samples.groups for ids in group.completion_ids]
    ended = [bool(ids) and ids[-1] == eos_id for group in samples.groups for ids in group.completion_ids]
    return {
        "reward/mean": statistics.fmean(rewards),
        "reward/std": statistics.pstdev(rewards),
        "reward/group_spread": statistics.fmean(max(g.rewards) - min(g.rewards) for g in samples.groups),
        "completions/mean_length": statistics.fmean(lengths),
        "completions/eos_rate": statistics.fmean(ended),
        "time/sampling": round(samples.sampling_seconds, 2),
        "time/ranking": round(samples.ranking_seconds, 2),
    }


def _reward_weights(weights: list[float] | None, count: int) -> torch.Tensor:
    """One weight per reward function, as TRL holds them (ones when the config gives none)."""
    if weights is None:
        return torch.ones(count)
    if len(weights) != count:
        raise ConfigError(f"reward_weights has {len(weights)} weights for {count} reward functions: give one each.")
    return torch.tensor(weights, dtype=torch.float32)
