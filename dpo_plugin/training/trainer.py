"""`PreferenceTrainer`: TRL's `DPOTrainer` with the plugin's objectives (DPO/cDPO/reference-free, IPO, TDPO1/TDPO2).

Read top-down: the step first (`_compute_loss`: read the batch → the reference's log-probs → the objective → the
logged metrics), then building the trainer, then the guards around each step. The reading is `objectives/reader.py`,
the maths `objectives/losses.py` and `objectives/metrics.py`; the reference is chosen in `reference.py` and prepared
in `reference_preparation.py`; checkpoints are written by `checkpoints.py`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import torch
from accelerate.utils import DistributedType, extract_model_from_parallel, is_peft_model
from datasets import Dataset
from torch import Tensor
from transformers import AutoTokenizer
from transformers.trainer_utils import TrainOutput
from trl import DPOTrainer

from ..data.formats import normalize_preference_dataset
from ..data.validation import report_truncated_pairs, validate_preference_dataset
from ..objectives.logprobs import completion_lengths
from ..objectives.losses import TOKEN_LEVEL_OBJECTIVES, PreferenceLoss, dpo_loss, ipo_loss, tdpo_loss
from ..objectives.metrics import step_metrics
from ..objectives.reader import CompletionReader, Reading, choose_reader, model_inputs
from ..trl_private import create_model_from_path, disable_gradient_checkpointing, get_config_model_id
from ..utils.errors import ConfigError, NonFiniteTrainingError
from .checkpoints import StagedCheckpoints, checkpoint_run, resume_checkpoint
from .config import PreferenceConfig, as_preference_config
from .frozen_weights import frozen_weights_cast
from .guards import DivergenceGuard, drop_gradients, gradients_are_finite, nonfinite_step_message
from .interruption import CheckpointOnInterrupt, Interrupted, StopSignals
from .reference import ADAPTERS_OFF, CHECKPOINT, INITIAL_POLICY, Reference, choose_reference, save_mixed_plan
from .reference_preparation import (
    TrainingBatches,
    check_reference_settings,
    prepare_reference,
    warn_lora_with_separate_reference,
)
from .run_identity import check_same_run, planned_steps, run_identity

logger = logging.getLogger("dpo_plugin")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # accelerate's mixed_precision → autocast dtype


class PreferenceTrainer(StagedCheckpoints, DPOTrainer):
    """Drop-in replacement for `trl.DPOTrainer` that adds the objectives selected by `PreferenceConfig.loss_type`.

    Plugin objectives (`dpo`, `ipo`, `tdpo1`, `tdpo2`) are computed here; TRL's own loss names go to
    `DPOTrainer._compute_loss` unchanged. The reference is chosen by `reference.choose_reference` (an explicit
    `ref_model`; a PEFT policy with its adapters off; a checkpoint, quantized or not, from the config's `ref_*` keys;
    else a frozen copy of the policy as passed in, where TRL would reload it from disk) and kept as `self.reference`.
    `self.readers` holds the reader each model was read with (by `id`), chosen on its first batch.
    """

    _tag_names = DPOTrainer._tag_names + ["dpo_plugin"]

    # ----------------------------------------------------------------------------------------------------------------
    # The step: read the batch → the reference's log-probs → the objective → the logged metrics.

    def _compute_loss(self, model, inputs, return_outputs):
        loss_type = self.args.plugin_loss_type
        if loss_type is None:
            return super()._compute_loss(model, inputs, return_outputs)
        model_kwargs = model_inputs(inputs) | ({"output_router_logits": True} if self.aux_loss_enabled else {})
        token_level = loss_type in TOKEN_LEVEL_OBJECTIVES  # TDPO reads the reference beside the policy, in one head
        reference = (self.reference.model, self.reference_context) if token_level else None
        reading = self._reader(model, model_kwargs).read(model, model_kwargs, inputs["completion_mask"], reference)

        chosen_logps, rejected_logps = reading.logps.chunk(2)
        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs, reading).chunk(2)
        result = self._objective(
            loss_type, chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps, inputs, reading
        )
        loss = result.losses.mean()

        mode = "train" if self.model.training else "eval"
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * reading.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(reading.aux_loss).mean().item())
        self._log_step(mode, inputs, reading, result)
        if return_outputs:
            warnings.warn(
                "`return_outputs=True` recomputes the full logits with an extra forward pass.", FutureWarning, 2
            )
            with torch.no_grad():
                return loss, model(**model_kwargs)
        return loss

    def _objective(self, loss_type: str, chosen_logratios, rejected_logratios, inputs, reading) -> PreferenceLoss:
        """Per-pair losses and implicit rewards of the configured plugin objective (`objectives/losses.py`)."""
        args = self.args
        if loss_type == "dpo":
            return dpo_loss(chosen_logratios, rejected_logratios, args.beta, args.dpo_label_smoothing)
        if loss_type == "ipo":
            lengths = completion_lengths(inputs["completion_mask"]).chunk(2) if args.ipo_normalize else (None, None)
            return ipo_loss(chosen_logratios, rejected_logratios, args.beta, *lengths)
        chosen_kl, rejected_kl = reading.seq_kl.chunk(2)
        alpha = args.tdpo_alpha if loss_type == "tdpo2" else None
        return tdpo_loss(chosen_logratios, rejected_logratios, chosen_kl, rejected_kl, args.beta, alpha)

    def _reference_logps(self, inputs, reading: Reading) -> Tensor:
        """log π_ref(y) of the batch's rows: read beside the policy (token-level), 0 (reference-free), precomputed
        before training, or a live pass of the reference."""
        if reading.ref_logps is not None:
            return reading.ref_logps
        if self.args.reference_free:
            return torch.zeros_like(reading.logps)
        if self.precompute_ref_logps:
            return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
        return torch.cat(self.compute_ref_log_probs(self.reference.model, inputs))

    def compute_ref_log_probs(self, model, inputs):
        """Summed reference log-probs of a batch, `(chosen, rejected)`, read as the policy is read. TRL calls this to
        precompute reference log-probs too, so both ways give the same numbers."""
        if self.args.plugin_loss_type is None:
            return super().compute_ref_log_probs(model, inputs)
        model_kwargs = model_inputs(inputs)
        reader = self._reader(model, model_kwargs, role="reference")
        with torch.no_grad(), self.reference_context():
            return reader.sequence_logps(model, model_kwargs, inputs["completion_mask"]).chunk(2)

    def _reader(self, model, model_kwargs: dict, role: str = "policy") -> CompletionReader:
        """The reader of `model`, chosen on its first batch (`choose_reader`): the chunked head when `chunked_head`
        is on and the heads it reads (with a token-level objective, the reference's too) reproduce their models' own
        logits, else full logits at completion positions."""
        if id(model) not in self.readers:
            models = [(model, self.reference_context if role == "reference" else self.accelerator.autocast, role)]
            if role == "policy" and self.args.plugin_loss_type in TOKEN_LEVEL_OBJECTIVES:
                models.append((self.reference.model, self.reference_context, "reference"))
            self.readers[id(model)] = choose_reader(
                models,
                model_kwargs,
                chunked=self.args.chunked_head,
                block_size=self.args.logits_block_size,
                share_prompt=self.args.share_prompt,
                head_context=self.accelerator.autocast,
            )
        return self.readers[id(model)]

    def _log_step(self, mode: str, inputs, reading: Reading, result: PreferenceLoss) -> None:
        """TRL's running token count and the step's metrics (`step_metrics`), gathered over processes as TRL does."""
        metrics = self._metrics[mode]
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        gathered = step_metrics(reading, result, self.accelerator.gather_for_metrics, self.accelerator.gather)
        for key, value in gathered.items():
            metrics[key].append(value)

    def reference_context(self):
        """What every reference pass runs inside: the training precision's autocast, gradient checkpointing off,
        and for a PEFT policy with no separate reference its adapters disabled; the same reference whether it runs
        live, precomputed, or in evaluation."""
        reference = self.reference if self.reference is not None else self._reference_chosen_by_trl()
        stack = reference.context(self.accelerator.autocast)
        stack.enter_context(disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs))
        return stack

    # ----------------------------------------------------------------------------------------------------------------
    # Building: the config, the data checked, the reference chosen, TRL's set-up, the reference prepared.

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
        model_id = model if isinstance(model, str) else get_config_model_id(model.config)
        args = as_preference_config(args if args is not None else PreferenceConfig(f"{model_id.split('/')[-1]}-DPO"))
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model_id)
        train_dataset = self._checked(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: self._checked(data, processing_class, args, name) for name, data in eval_dataset.items()
            }
        else:
            eval_dataset = self._checked(eval_dataset, processing_class, args, "eval")
        if args.builds_reference:
            check_reference_settings(args)
        if isinstance(model, str) and (args.builds_reference or ref_model is not None):
            model = create_model_from_path(model, **(args.model_init_kwargs or {}))
        reference = None
        if not isinstance(model, str):
            self._check_tokenizer_fits(model, processing_class)
            reference = choose_reference(
                model,
                ref_model,
                checkpoint=args.ref_model_name_or_path,
                quantization=args.ref_quantization_settings,
                tokenizer=processing_class,
                device=args.device,
                peft=peft_config is not None or is_peft_model(model),
                precomputed=args.precompute_ref_log_probs,
                sharded=args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3,
            )
            if peft_config is not None:
                warn_lora_with_separate_reference(reference, args)
        self.reference: Reference | None = reference  # TRL's __init__ may already run it (precomputed log-probs)
        self.readers: dict[int, CompletionReader] = {}
        super().__init__(
            model=model,
            ref_model=reference.model if reference is not None and reference.separate else None,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        if args.reference_free:
            self.ref_model = self.reference = None  # TRL insists on building one; reference-free DPO never runs it
        elif reference is None:  # a policy given by name: TRL loaded it and chose its reference
            self.reference = self._reference_chosen_by_trl()
        else:
            reference.model = self.ref_model if reference.separate else self.model  # as accelerate prepared them
        if args.qlora_adapter_dtype == "float32":
            self._adapters_in_float32()
        self.truncated_pairs = report_truncated_pairs(self.train_dataset, args.max_length, args.truncation_mode)
        self.reference_report = None
        if self.reference is not None and self.reference.kind == CHECKPOINT:
            with StopSignals() as stop:  # the mixed reference's calibration stops at its next layer
                prepared = prepare_reference(
                    self.reference,
                    TrainingBatches(
                        self.train_dataset, self.data_collator, args.per_device_train_batch_size, args.device
                    ),
                    policy=self.accelerator.unwrap_model(self.model),
                    tokenizer=self.processing_class,
                    autocast=self.accelerator.autocast,
                    reference_context=self.reference_context,
                    calibration_batches=args.ref_calibration_batches,
                    gap_batches=args.ref_gap_batches,
                    progress=not args.disable_tqdm,
                    stop=stop,
                )
            if stop.received is not None:
                raise Interrupted(stop.received, "the reference's preparation")
            self.reference, self.reference_report, logged = prepared
            for key, value in logged.items():
                self._metrics["train"][key] = [value]  # folded into the first training log entry
        self.interruption = CheckpointOnInterrupt(self.accelerator)
        if args.save_on_interrupt:
            self.add_callback(self.interruption)
        self.divergence_guard = DivergenceGuard(args.max_weight_growth)
        self.add_callback(self.divergence_guard)
        self._skipped_steps, self._skipped_in_log_window, self._log_window_start = 0, set(), 0

    @staticmethod
    def _checked(dataset, processing_class, args: PreferenceConfig, name: str):
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
            skip_invalid=args.skip_invalid_rows,
            name=name,
            truncation_mode=args.truncation_mode,
        )

    @staticmethod
    def _check_tokenizer_fits(model, processing_class) -> None:
        """`ConfigError` when the tokenizer has ids the model's embeddings cannot look up (an `IndexError` in the
        first step otherwise)."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        embeddings = extract_model_from_parallel(model).get_input_embeddings()
        if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
            raise ConfigError(
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

    def _adapters_in_float32(self) -> None:
        """`qlora_adapter_dtype: float32`: the trainable weights of a policy on a quantized base back in float32 (TRL
        cast them to bfloat16), before the optimizer is built."""
        policy = self.accelerator.unwrap_model(self.model)
        if getattr(policy, "is_loaded_in_4bit", False) or getattr(policy, "is_loaded_in_8bit", False):
            for parameter in policy.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """transformers' save of the weights, tokenizer and arguments, and a mixed reference's plan beside them, so
        `dpo-plugin eval` rebuilds the reference the run trained against (`reference.save_mixed_plan`)."""
        super()._save(output_dir, state_dict)
        if self.args.should_save and self.reference is not None and self.reference.quantization.plan is not None:
            save_mixed_plan(output_dir if output_dir is not None else self.args.output_dir, self.reference)

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
        if not self.args.skip_nonfinite_steps:
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
        unless `allow_partial_resume`) and of this same run (`run_identity.check_same_run`, but for the keys in
        `resume_allow_changes`); a checkpoint already at the run's last step trains nothing and says so
        (`finished_already`). While it runs, a PEFT policy's frozen base computes under autocast with weights cast
        once (`_frozen_weights_cast`). The SIGTERM/SIGINT handlers it installs (`save_on_interrupt`) are removed
        however it ends."""
        resume_from_checkpoint = resume_checkpoint(
            resume_from_checkpoint, self.args.output_dir, self.args.allow_partial_resume
        )
        self.finished_already = False
        if resume_from_checkpoint is not None:
            saved = checkpoint_run(resume_from_checkpoint)
            check_same_run(
                saved.get("run"), run_identity(self), self.args.resume_allow_changes or (), resume_from_checkpoint
            )
            if saved["global_step"] >= planned_steps(self):
                logger.info(
                    "%s is at step %d, where this run ends: nothing to train.",
                    resume_from_checkpoint,
                    saved["global_step"],
                )
                self.finished_already = True
                return TrainOutput(saved["global_step"], math.nan, {})
        try:
            with self._frozen_weights_cast():
                return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.interruption.restore_handlers()

    def _frozen_weights_cast(self):
        """`frozen_weights_cast` of a PEFT policy's base (never saved; also its reference when it has no other) in
        the autocast precision, with `cast_frozen_weights_once` under bf16/fp16 autocast in one process; else
        nothing. Not a separate reference: its casts live one layer at a time (no backward keeps them), so holding
        them all would add half its float bytes to the peak."""
        dtype = AUTOCAST_DTYPES.get(self.accelerator.mixed_precision)
        policy = self.accelerator.unwrap_model(self.model)
        single = self.accelerator.distributed_type == DistributedType.NO
        if not (self.args.cast_frozen_weights_once and dtype is not None and single and is_peft_model(policy)):
            return contextlib.nullcontext()
        return frozen_weights_cast(policy, dtype)

    @property
    def interrupted_by(self) -> int | None:
        """The signal (SIGTERM or SIGINT) that stopped the last `train()` early, after saving a checkpoint; None when
        training ran to its end."""
        return self.interruption.stopped_by
