"""`PreferenceTrainer`: TRL's `DPOTrainer` with the plugin's objectives (DPO/cDPO/reference-free, IPO, TDPO1/TDPO2).

Read top-down: the class and its construction, then the objective step (`_compute_loss`: policy and reference
log-probs, the objective, the logged metrics), then the guards around each step, then data and reference
plumbing. Checkpoints live in `checkpoints.py`, the reference in `reference.py`, the maths in `objectives/`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from functools import partial

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model
from datasets import Dataset
from torch import Tensor
from tqdm.auto import tqdm
from transformers import AutoTokenizer
from trl import DPOTrainer

from ..data.assets import resolve_model
from ..data.formats import normalize_preference_dataset
from ..data.validation import validate_preference_dataset
from ..objectives.chunked_head import Head, auto_block_size, chunked_head, head_matches_model, head_of
from ..objectives.logprobs import (
    completion_hidden,
    completion_lengths,
    completion_logits,
    log_probs_from_logits,
    summed_logps,
    token_kl,
    token_logps,
)
from ..objectives.losses import TOKEN_LEVEL_OBJECTIVES, PreferenceLoss, dpo_loss, ipo_loss, tdpo_loss
from ..objectives.packing import completion_hidden_shared_prompt, completion_logits_shared_prompt
from ..trl_private import create_model_from_path, disable_gradient_checkpointing, get_config_model_id
from .checkpoints import StagedCheckpoints, resume_checkpoint
from .config import MIXED, PreferenceConfig
from .guards import (
    DivergenceGuard,
    NonFiniteTrainingError,
    drop_gradients,
    gradients_are_finite,
    nonfinite_step_message,
)
from .interruption import CheckpointOnInterrupt
from .mixed_reference import (
    NF4,
    MixedPlan,
    bf16_embedding_saving,
    cached_sensitivities,
    check_budget,
    model_bytes,
    plan_precisions,
    quantizable_layers,
    quantize_to_plan,
)
from .reference import (
    ADAPTERS_OFF,
    CHECKPOINT,
    INITIAL_POLICY,
    Reference,
    choose_reference,
    load_reference,
    quantization_gap,
)

logger = logging.getLogger("dpo_plugin")

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


@dataclass
class _PolicyPass:
    """Per-sequence policy and reference log-probs over the `[chosen; rejected]` batch, with per-token logging stats.

    The per-token tensors share `mask`'s shape (2B, T) and are zero outside it.
    """

    logps: Tensor
    ref_logps: Tensor
    mask: Tensor
    entropy: Tensor
    mean_logits: Tensor
    is_top1: Tensor
    aux_loss: Tensor | None = None
    seq_kl: Tensor | None = None


class PreferenceTrainer(StagedCheckpoints, DPOTrainer):
    """Drop-in replacement for `trl.DPOTrainer` that adds the objectives selected by `PreferenceConfig.loss_type`.

    Plugin objectives (`dpo`, `ipo`, `tdpo1`, `tdpo2`) are computed here; TRL's own loss names go to
    `DPOTrainer._compute_loss` unchanged. The reference is chosen by `reference.choose_reference` (an explicit
    `ref_model`; a PEFT policy with its adapters off; a checkpoint, quantized or not, from the config's `ref_*` keys;
    else a frozen copy of the policy as passed in, where TRL would reload it from disk) and kept as `self.reference`.
    """

    _tag_names = DPOTrainer._tag_names + ["dpo_plugin"]

    def __init__(
        self,
        model,
        ref_model=None,
        args: PreferenceConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = PreferenceConfig(f"{model_name.split('/')[-1]}-DPO")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(
                model if isinstance(model, str) else get_config_model_id(model.config)
            )
        train_dataset = self._checked(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: self._checked(data, processing_class, args, name) for name, data in eval_dataset.items()
            }
        else:
            eval_dataset = self._checked(eval_dataset, processing_class, args, "eval")
        builds_reference = getattr(args, "builds_reference", False)
        if builds_reference:
            self._check_reference_can_be_quantized(args)
        if isinstance(model, str) and (builds_reference or ref_model is not None):
            model = create_model_from_path(model, **(args.model_init_kwargs or {}))
        reference = None
        if not isinstance(model, str):
            self._check_tokenizer_fits(model, processing_class)
            reference = choose_reference(
                model,
                ref_model,
                checkpoint=getattr(args, "ref_model_name_or_path", None),
                quantization=getattr(args, "ref_quantization", "none"),
                compute_dtype=getattr(args, "ref_bnb_4bit_compute_dtype", None),
                double_quant=getattr(args, "ref_bnb_4bit_use_double_quant", None),
                tokenizer=processing_class,
                device=args.device,
                peft=peft_config is not None or is_peft_model(model),
                precomputed=args.precompute_ref_log_probs,
                sharded=args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3,
            )
            if builds_reference and reference.kind == CHECKPOINT and peft_config is not None:
                self._warn_lora_with_separate_reference(reference, args)
        self.reference: Reference | None = reference  # TRL's __init__ may already run it (precomputed log-probs)
        self._chunked_ok: dict[int, bool] = {}  # whether each model (by id) takes the chunked head, checked once
        super().__init__(
            model,
            reference.model if reference is not None and reference.separate else None,
            args,
            data_collator,
            train_dataset,
            eval_dataset,
            processing_class,
            compute_metrics,
            callbacks,
            optimizers,
            quantization_config,
            peft_config,
        )
        if getattr(args, "reference_free", False):
            self.ref_model = self.reference = None  # TRL insists on building one; reference-free DPO never runs it
        elif reference is None:  # a policy given by name: TRL loaded it and chose its reference
            self.reference = self._reference_chosen_by_trl()
        else:
            reference.model = self.ref_model if reference.separate else self.model  # as accelerate prepared them
        if getattr(args, "qlora_adapter_dtype", "bfloat16") == "float32":
            self._adapters_in_float32()
        self.mixed_plan = (
            self._quantize_reference_to_budget() if getattr(args, "ref_quantization", None) == MIXED else None
        )
        self.reference_report = self._reference_report() if builds_reference else None
        self.interruption = CheckpointOnInterrupt(self.accelerator)
        if getattr(args, "save_on_interrupt", True):
            self.add_callback(self.interruption)
        self.divergence_guard = DivergenceGuard(getattr(args, "max_weight_growth", 0.0))
        self.add_callback(self.divergence_guard)
        self._skipped_steps, self._skipped_in_log_window, self._log_window_start = 0, set(), 0

    # ----------------------------------------------------------------------------------------------------------------
    # The objective step: policy and reference log-probs → the objective → TRL's logged metrics.

    @property
    def _plugin_loss_type(self) -> str | None:
        return getattr(self.args, "plugin_loss_type", None)

    def _compute_loss(self, model, inputs, return_outputs):
        loss_type = self._plugin_loss_type
        if loss_type is None:
            return super()._compute_loss(model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        model_kwargs = self._model_kwargs(inputs)
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True

        policy = self._policy_pass(model, model_kwargs, inputs, token_level=loss_type in TOKEN_LEVEL_OBJECTIVES)
        chosen_logps, rejected_logps = policy.logps.chunk(2)
        ref_chosen_logps, ref_rejected_logps = policy.ref_logps.chunk(2)
        result = self._objective(
            loss_type, chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps, inputs, policy
        )
        loss = result.losses.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * policy.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(policy.aux_loss).mean().item())
        self._log_metrics(mode, inputs, policy, result)

        if return_outputs:
            warnings.warn(
                "`return_outputs=True` recomputes the full logits with an extra forward pass.", FutureWarning, 2
            )
            with torch.no_grad():
                return loss, model(**model_kwargs)
        return loss

    def _objective(self, loss_type, chosen_logratios, rejected_logratios, inputs, policy) -> PreferenceLoss:
        """Per-pair losses and implicit rewards of the configured plugin objective."""
        args = self.args
        if loss_type == "dpo":
            return dpo_loss(chosen_logratios, rejected_logratios, args.beta, args.dpo_label_smoothing)
        if loss_type == "ipo":
            lengths = completion_lengths(inputs["completion_mask"]).chunk(2) if args.ipo_normalize else (None, None)
            return ipo_loss(chosen_logratios, rejected_logratios, args.beta, *lengths)
        chosen_kl, rejected_kl = policy.seq_kl.chunk(2)
        alpha = args.tdpo_alpha if loss_type == "tdpo2" else None
        return tdpo_loss(chosen_logratios, rejected_logratios, chosen_kl, rejected_kl, args.beta, alpha)

    def _policy_pass(self, model, model_kwargs, inputs, token_level: bool) -> _PolicyPass:
        """Policy and reference completion log-probs; with `token_level`, SeqKL(y) = Σ_t KL(π_ref ‖ π_θ) too.

        Through the chunked head (`objectives/chunked_head.py`: the decoders' hidden states at completion positions,
        projected a block at a time, nothing of (positions × vocabulary) held for backward) when `chunked_head` is on
        and both models' heads take it, else through full logits at completion positions.
        """
        block_size = self._chunked_block_size(model, model_kwargs, token_level)
        if block_size is None:
            return self._policy_pass_full_logits(model, model_kwargs, inputs, token_level)
        completion_mask = inputs["completion_mask"]
        policy, outputs = self._completion_hidden(model, model_kwargs, completion_mask)
        head = self._head(model)
        seq_kl = None
        if token_level:
            ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
            with torch.no_grad(), self.reference_context():
                reference, _ = self._completion_hidden(self.reference.model, ref_kwargs, completion_mask)
            ref_head = self._head(self.reference.model)
            with self.accelerator.autocast():  # the precision the models' own heads run in (accelerate wraps forward)
                per = chunked_head(policy.hidden, policy.labels, head, block_size, reference.hidden, ref_head)
            ref_logps, seq_kl = policy.sequence_sum(per.ref_logps), policy.sequence_sum(per.kl)
        else:
            with self.accelerator.autocast():
                per = chunked_head(policy.hidden, policy.labels, head, block_size)
            ref_logps = self._ref_logps(inputs, completion_mask)
        return _PolicyPass(
            logps=policy.sequence_sum(per.logps),
            ref_logps=ref_logps,
            mask=policy.mask,
            entropy=policy.scatter(per.entropy),
            mean_logits=policy.scatter(per.mean_logits),
            is_top1=policy.scatter(per.is_top1),
            aux_loss=getattr(outputs, "aux_loss", None),
            seq_kl=seq_kl,
        )

    def _ref_logps(self, inputs, completion_mask) -> Tensor:
        """log π_ref(y) of the batch's rows for a sequence-level objective: 0 reference-free, precomputed, or live."""
        if self.args.reference_free:
            return torch.zeros(completion_mask.size(0), device=completion_mask.device)
        if self.precompute_ref_logps:
            return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
        return torch.cat(self.compute_ref_log_probs(self.reference.model, inputs))

    def _policy_pass_full_logits(self, model, model_kwargs, inputs, token_level: bool) -> _PolicyPass:
        """`_policy_pass` through logits: both models project only the positions from the batch's first completion
        token on (`completion_logits`), and the full-vocabulary log-softmax is taken only at completion positions;
        memory grows with completion tokens × vocabulary."""
        completion_mask = inputs["completion_mask"]
        policy, outputs = self._completion_logits(model, model_kwargs, completion_mask)
        policy_log_probs = log_probs_from_logits(policy.logits)
        seq_kl = None
        if token_level:
            ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
            with torch.no_grad(), self.reference_context():
                reference, _ = self._completion_logits(self.reference.model, ref_kwargs, completion_mask)
                ref_log_probs = log_probs_from_logits(reference.logits)
            ref_logps = reference.sequence_sum(token_logps(ref_log_probs, reference.labels))
            seq_kl = policy.sequence_sum(token_kl(ref_log_probs, policy_log_probs))
        else:
            ref_logps = self._ref_logps(inputs, completion_mask)

        with torch.no_grad():
            detached = policy_log_probs.detach()
            entropy = -(detached.exp() * detached).sum(dim=-1)
        return _PolicyPass(
            logps=policy.sequence_sum(token_logps(policy_log_probs, policy.labels)),
            ref_logps=ref_logps,
            mask=policy.mask,
            entropy=policy.scatter(entropy),
            mean_logits=policy.scatter(policy.logits.detach().float().mean(dim=-1)),
            is_top1=policy.scatter(policy.logits.argmax(dim=-1) == policy.labels),
            aux_loss=getattr(outputs, "aux_loss", None),
            seq_kl=seq_kl,
        )

    def compute_ref_log_probs(self, model, inputs):
        """Summed reference log-probs of a batch, through the same completion-position logits as the policy.

        TRL calls this to precompute reference log-probs too, so both ways give the same numbers.
        """
        if self._plugin_loss_type is None:
            return super().compute_ref_log_probs(model, inputs)
        model_kwargs, completion_mask = self._model_kwargs(inputs), inputs["completion_mask"]
        with torch.no_grad(), self.reference_context():
            block_size = self._chunked_block_size(model, model_kwargs, token_level=False, role="reference")
            if block_size is None:
                selected, _ = self._completion_logits(model, model_kwargs, completion_mask)
                return summed_logps(selected).chunk(2)
            selected, _ = self._completion_hidden(model, model_kwargs, completion_mask)
            per = chunked_head(selected.hidden, selected.labels, self._head(model), block_size)
            return selected.sequence_sum(per.logps).chunk(2)

    def _completion_hidden(self, model, model_kwargs, completion_mask):
        """`completion_hidden`, through shared-prompt packing when `share_prompt` is on and the batch and model
        allow it (as `_completion_logits`)."""
        if getattr(self.args, "share_prompt", False):
            return completion_hidden_shared_prompt(model, model_kwargs, completion_mask)
        return completion_hidden(model, model_kwargs, completion_mask)

    def _chunked_block_size(self, model, model_kwargs, token_level: bool, role: str = "policy") -> int | None:
        """The chunked head's block size when `model` (and, with `token_level`, the reference) can take it, else None:
        each model's head is checked once (`head_of`, `head_matches_model`) and a fallback logged once, saying why."""
        if not getattr(self.args, "chunked_head", False):
            return None
        models = [(model, role)] + ([(self.reference.model, "reference")] if token_level else [])
        for candidate, name in models:
            if id(candidate) not in self._chunked_ok:
                self._chunked_ok[id(candidate)] = self._head_checks_out(candidate, name, model_kwargs)
            if not self._chunked_ok[id(candidate)]:
                return None
        vocab = extract_model_from_parallel(model).get_output_embeddings().weight.shape[0]
        return self.args.logits_block_size or auto_block_size(vocab)

    @staticmethod
    def _head(model) -> Head:
        """`model`'s head for this step (gathered afresh under FSDP, whose sharded weights change every step)."""
        return head_of(model)[0]

    def _head_checks_out(self, model, role: str, model_kwargs) -> bool:
        head, reason = head_of(model)
        context = self.reference_context if role == "reference" else self.accelerator.autocast
        if head is not None and not head_matches_model(model, head, model_kwargs, context):
            head, reason = None, "its head and logit transform do not reproduce the model's own logits"
        if head is None:
            logger.warning(
                "The %s's objective head falls back to full logits at completion positions: %s.", role, reason
            )
        return head is not None

    def _completion_logits(self, model, model_kwargs, completion_mask):
        """`completion_logits`, through shared-prompt packing (`objectives/packing.py`) when `share_prompt` is on and
        the batch and model allow it."""
        if getattr(self.args, "share_prompt", False):
            return completion_logits_shared_prompt(model, model_kwargs, completion_mask)
        return completion_logits(model, model_kwargs, completion_mask)

    @staticmethod
    def _model_kwargs(inputs) -> dict:
        kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        kwargs["use_cache"] = False
        return kwargs

    def _log_metrics(self, mode: str, inputs, policy: _PolicyPass, result: PreferenceLoss) -> None:
        """TRL's metric keys (same definitions), plus `kl/chosen` and `kl/rejected` when SeqKL is computed."""
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]

        def ratio(numerator: Tensor, denominator: Tensor) -> float:
            numerator, denominator = gather(numerator).sum().item(), gather(denominator).sum().item()
            return numerator / denominator if denominator > 0 else 0.0

        mask = policy.mask
        metrics["entropy"].append(ratio((policy.entropy * mask).sum(), mask.sum()))
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_mask, rejected_mask = mask.chunk(2)
        chosen_logits, rejected_logits = policy.mean_logits.chunk(2)
        metrics["logits/chosen"].append(ratio(chosen_logits[chosen_mask.bool()].sum(), chosen_mask.sum()))
        metrics["logits/rejected"].append(ratio(rejected_logits[rejected_mask.bool()].sum(), rejected_mask.sum()))
        chosen_top1 = policy.is_top1.chunk(2)[0].bool() & chosen_mask.bool()
        metrics["mean_token_accuracy"].append(ratio(chosen_top1.sum(), chosen_mask.sum()))

        chosen_rewards, rejected_rewards = result.chosen_rewards, result.rejected_rewards
        metrics["rewards/chosen"].append(self.accelerator.gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(self.accelerator.gather(rejected_rewards).mean().item())
        accuracies = (chosen_rewards > rejected_rewards).float()
        metrics["rewards/accuracies"].append(self.accelerator.gather(accuracies).mean().item())
        metrics["rewards/margins"].append(self.accelerator.gather(chosen_rewards - rejected_rewards).mean().item())
        chosen_logps, rejected_logps = policy.logps.detach().chunk(2)
        metrics["logps/chosen"].append(self.accelerator.gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(self.accelerator.gather(rejected_logps).mean().item())
        if policy.seq_kl is not None:
            chosen_kl, rejected_kl = policy.seq_kl.detach().chunk(2)
            metrics["kl/chosen"].append(self.accelerator.gather(chosen_kl).mean().item())
            metrics["kl/rejected"].append(self.accelerator.gather(rejected_kl).mean().item())

    # ----------------------------------------------------------------------------------------------------------------
    # Around each step: the non-finite guard, and SIGTERM/SIGINT.

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's step, then the non-finite guard: a NaN/inf loss or gradient raises `NonFiniteTrainingError` before
        the optimizer touches the weights, or with `skip_nonfinite_steps` drops this step's gradients and goes on.

        A skipped step is left out of the logged means (`log`): the metrics it logged are removed, and every later
        log entry counts the steps skipped so far under `nonfinite_skipped`. The weights after each step are checked by
        `self.divergence_guard`.
        """
        self._log_window_start = self._globalstep_last_logged  # transformers moves it on before `log` runs
        logged = {key: len(values) for key, values in self._metrics["train"].items()}
        loss = super().training_step(model, inputs, num_items_in_batch)
        what = "loss" if not torch.isfinite(loss) else None if gradients_are_finite(model) else "gradients"
        if what is None:
            return loss
        step = self.state.global_step + 1
        if not getattr(self.args, "skip_nonfinite_steps", False):
            good = self.divergence_guard.good_checkpoints(self.args.output_dir)
            raise NonFiniteTrainingError(nonfinite_step_message(what, step, good))
        drop_gradients(model)
        metrics = self._metrics["train"]
        for key in list(metrics):  # TRL averages each list at the next log: leave none empty
            if logged.get(key, 0):
                del metrics[key][logged[key] :]
            else:
                del metrics[key]
        self._skipped_in_log_window.add(step)
        self.divergence_guard.step_was_skipped = True
        logger.warning("Non-finite %s at optimizer step %d: step skipped (skip_nonfinite_steps).", what, step)
        return torch.zeros_like(loss)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log. The loss of a window with skipped steps is the mean over the steps that ran (transformers
        divided by all of them); a window of skipped steps only logs no loss, and no gradient norm after a skip."""
        if "learning_rate" in logs and self._skipped_in_log_window:  # a training log entry
            steps = self.state.global_step - self._log_window_start
            ran = steps - len(self._skipped_in_log_window)
            if ran > 0:
                logs["loss"] = logs["loss"] * steps / ran
            else:
                logs.pop("loss", None)
            if self.state.global_step in self._skipped_in_log_window:
                logs.pop("grad_norm", None)
            self._skipped_steps += len(self._skipped_in_log_window)
            self._skipped_in_log_window.clear()
        if "learning_rate" in logs and self._skipped_steps:
            logs["nonfinite_skipped"] = float(self._skipped_steps)
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """TRL's `train`, resuming only from a checkpoint that resumes exactly (`checkpoints.resume_checkpoint`,
        unless `allow_partial_resume`); the SIGTERM/SIGINT handlers it installs (`save_on_interrupt`) are removed
        however it ends."""
        resume_from_checkpoint = resume_checkpoint(
            resume_from_checkpoint, self.args.output_dir, getattr(self.args, "allow_partial_resume", False)
        )
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.interruption.restore_handlers()

    @property
    def interrupted_by(self) -> int | None:
        """The signal (SIGTERM or SIGINT) that stopped the last `train()` early, after saving a checkpoint; None when
        training ran to its end."""
        return self.interruption.stopped_by

    # ----------------------------------------------------------------------------------------------------------------
    # Data and reference plumbing.

    @staticmethod
    def _checked(dataset, processing_class, args, name: str):
        """Raw preference rows in any accepted format → TRL's format, validated before anything runs or is written.

        Already-tokenized datasets (with `prompt_ids`) and iterable datasets pass through untouched.
        """
        if not isinstance(dataset, Dataset) or "prompt_ids" in dataset.column_names:
            return dataset
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        return validate_preference_dataset(
            normalize_preference_dataset(dataset),
            tokenizer,
            args.max_length,
            skip_invalid=getattr(args, "skip_invalid_rows", False),
            name=name,
            truncation_mode=args.truncation_mode,
        )

    def reference_context(self):
        """What every reference pass runs inside: the training precision's autocast, gradient checkpointing off,
        and for a PEFT policy with no separate reference its adapters disabled; the same reference whether it runs
        live, precomputed, or in evaluation."""
        reference = self.reference if self.reference is not None else self._reference_chosen_by_trl()
        stack = reference.context(self.accelerator.autocast)
        stack.enter_context(disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs))
        return stack

    @staticmethod
    def _check_tokenizer_fits(model, processing_class) -> None:
        """ValueError when the tokenizer has ids the model's embeddings cannot look up (an `IndexError` in the first
        step otherwise)."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        embeddings = extract_model_from_parallel(model).get_input_embeddings()
        if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's embeddings hold "
                f"{embeddings.num_embeddings}: ids past them cannot be looked up. Use the model's own tokenizer, or "
                "grow the embeddings first (model.resize_token_embeddings(len(tokenizer)))."
            )

    def _reference_chosen_by_trl(self) -> Reference:
        """The reference TRL built for a policy it loaded by name: the same checkpoint reloaded, the PEFT policy with
        its adapters off, or (precomputed log-probs) the policy before training."""
        if self.ref_model is not None:
            return Reference(self.ref_model, CHECKPOINT, get_config_model_id(self.ref_model.config))
        return Reference(self.model, ADAPTERS_OFF if is_peft_model(self.model) else INITIAL_POLICY)

    @staticmethod
    def _check_reference_can_be_quantized(args) -> None:
        """ValueError for a quantized reference under FSDP or DeepSpeed ZeRO-3, which shard and re-wrap it."""
        if args.ref_quantization == "none":
            return
        zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
        if zero3 or args.fsdp:
            raise ValueError(
                "A quantized reference cannot be sharded by FSDP or DeepSpeed ZeRO-3 (bitsandbytes' packed 4-bit and "
                "8-bit weights are not shardable parameters). Use DDP or ZeRO-1/2, or set ref_quantization: none."
            )

    @staticmethod
    def _warn_lora_with_separate_reference(reference: Reference, args) -> None:
        if args.ref_model_name_or_path is None and args.ref_quantization != "none":
            logger.warning(
                "LoRA policy with ref_quantization: %s. Its reference was free already (the base with the adapters "
                "off); this loads a second, %s copy (%.0f MB more) that is also off the base by the quantization "
                "gap. To save memory with LoRA, quantize the base instead (load_in_4bit: true, QLoRA, as in "
                "recipes/qlora_dpo.yaml) and keep ref_quantization: none.",
                args.ref_quantization,
                args.ref_quantization.upper(),
                reference.model.get_memory_footprint() / 1e6,
            )

    def _adapters_in_float32(self) -> None:
        """`qlora_adapter_dtype: float32`: the trainable weights of a policy on a quantized base back in float32 (TRL
        cast them to bfloat16), before the optimizer is built."""
        policy = self.accelerator.unwrap_model(self.model)
        if getattr(policy, "is_loaded_in_4bit", False) or getattr(policy, "is_loaded_in_8bit", False):
            for parameter in policy.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()

    def _reference_report(self) -> dict:
        """Which reference was built, its memory, and (quantized) its measured gap to full precision, logged once."""
        reference = self.accelerator.unwrap_model(self.reference.model)
        report = {
            "checkpoint": self.reference.checkpoint,
            "quantization": self.reference.quantization,
            "memory_bytes": reference.get_memory_footprint(),
        }
        if self.mixed_plan is not None:
            report["plan"] = {
                "bytes": self.mixed_plan.bytes,
                "full_precision_bytes": self.mixed_plan.full_bytes,
                "estimated_gap": self.mixed_plan.estimated_gap,
                "layers": self.mixed_plan.precisions,
                "bf16_embeddings": self.mixed_plan.bf16_embeddings,
            }
        if self.reference.quantization != "none" and self.args.ref_gap_batches > 0:
            gap = self._quantization_gap()
            report["gap"] = asdict(gap)
            for key, value in gap.metrics().items():
                self._metrics["train"][key] = [value]  # folded into the first training log entry
            logger.info(
                "Quantized reference (%s) against full precision over %d training completions: "
                "|Δ log π_ref(y)| mean %.3f, max %.3f; per-token KL %.5f nats. Implicit rewards start off zero by "
                "about this much.",
                self.reference.quantization.upper(),
                gap.sequences,
                gap.logp_abs_diff_mean,
                gap.logp_abs_diff_max,
                gap.token_kl_mean,
            )
        return report

    def _training_batches(self, first: int, count: int) -> list[tuple[dict, Tensor]]:
        """`count` training batches from row `first` on (fewer if the data ends), as (model_kwargs, completion_mask)
        on the device."""
        batch_size, n = self.args.per_device_train_batch_size, len(self.train_dataset)
        rows = self.train_dataset.select(range(min(first, n), min(first + count * batch_size, n)))
        rows = rows.remove_columns([c for c in rows.column_names if c in ("ref_chosen_logps", "ref_rejected_logps")])
        batches = []
        for start in range(0, len(rows), batch_size):
            batch = self.data_collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            batch = {key: value.to(self.args.device) for key, value in batch.items()}
            batches.append((self._model_kwargs(batch), batch["completion_mask"]))
        return batches

    def _quantize_reference_to_budget(self) -> MixedPlan:
        """`ref_quantization: mixed`: measure each linear layer's sensitivity on the last `ref_calibration_batches`
        training batches (or read them from the cache, for the same weights and batches), plan NF4 / int8 / full
        precision within `ref_bytes_budget` (`mixed_reference.py`; under bf16 autocast with the embeddings and LM
        head in bfloat16), and quantize the (full-precision) reference to the plan in place, before anything
        trains."""
        reference = self.accelerator.unwrap_model(self.reference.model)
        layers, full_bytes = quantizable_layers(reference), model_bytes(reference)
        device_type = self.args.device.type
        with self.reference_context():
            bf16_autocast = (
                torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16
            )
        saved = bf16_embedding_saving(reference) if bf16_autocast else 0
        check_budget(layers, full_bytes, self.args.ref_bytes_budget, saved)
        count = self.args.ref_calibration_batches
        batches = self._training_batches(len(self.train_dataset) - count * self.args.per_device_train_batch_size, count)
        dtype = getattr(torch, self.args.ref_bnb_4bit_compute_dtype or "float32")
        progress = partial(tqdm, desc="Reference layers' sensitivity", disable=self.args.disable_tqdm, leave=False)
        sensitivity = cached_sensitivities(reference, self.reference_context, batches, dtype, progress)
        plan = plan_precisions(layers, sensitivity, full_bytes, self.args.ref_bytes_budget, saved)
        quantize_to_plan(reference, plan, dtype)
        most = sorted(layers, key=lambda name: sensitivity[name][NF4], reverse=True)[:3]
        logger.info(
            "Mixed-precision reference within %.3f of the full-precision bytes: %s. Most sensitive in NF4: %s.",
            self.args.ref_bytes_budget,
            plan.describe(),
            ", ".join(f"{name} ({sensitivity[name][NF4]:.3f} nats, now {plan.precisions[name]})" for name in most),
        )
        return plan

    def _quantization_gap(self):
        """Gap between the quantized reference and the full-precision one on the first `ref_gap_batches` batches.

        The full-precision reference is the policy as it starts (adapters off for PEFT) when the reference is the
        policy's checkpoint, else that checkpoint loaded in full precision for the measurement only.
        """
        batches = self._training_batches(0, self.args.ref_gap_batches)
        device = self.args.device
        policy = self.accelerator.unwrap_model(self.model)
        quantized = (self.reference.model, self.reference_context)
        if self.reference.checkpoint == resolve_model(get_config_model_id(policy.config)):
            as_it_starts = Reference(policy, ADAPTERS_OFF if is_peft_model(policy) else INITIAL_POLICY)
            was_training = policy.training
            policy.eval()
            gap = quantization_gap(
                (policy, lambda: as_it_starts.context(self.accelerator.autocast)), quantized, batches
            )
            policy.train(was_training)
            return gap
        full = load_reference(self.reference.checkpoint, policy, self.processing_class, "none", device=device)
        return quantization_gap((full, self.accelerator.autocast), quantized, batches)
