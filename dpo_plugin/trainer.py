"""`PreferenceTrainer`: TRL's `DPOTrainer` with the plugin's objectives (DPO/cDPO/reference-free, IPO, TDPO1/TDPO2)."""

import contextlib
import warnings
from dataclasses import dataclass

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from transformers import PreTrainedModel
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, use_adapter

from .config import TDPO_LOSS_TYPES, PreferenceConfig
from .logprobs import completion_lengths, token_kl, token_logps
from .losses import PreferenceLoss, dpo_loss, ipo_loss, tdpo_loss
from .reference import frozen_copy

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


@dataclass
class _PolicyPass:
    """Per-sequence log-probs of one forward over the `[chosen; rejected]` batch, with per-token logging stats.

    The per-token tensors share `mask`'s shape (2B, T) and are zero outside it.
    """

    logps: Tensor
    mask: Tensor
    entropy: Tensor
    mean_logits: Tensor
    is_top1: Tensor
    aux_loss: Tensor | None = None
    seq_kl: Tensor | None = None
    ref_logps: Tensor | None = None


class PreferenceTrainer(DPOTrainer):
    """Drop-in replacement for `trl.DPOTrainer` that adds the objectives selected by `PreferenceConfig.loss_type`.

    Plugin objectives (`dpo`, `ipo`, `tdpo1`, `tdpo2`) are computed here; TRL's own loss names go to
    `DPOTrainer._compute_loss` unchanged. Without `ref_model`, the reference is the PEFT policy with adapters
    disabled, or else a frozen copy of the policy as passed in (TRL would reload it from disk).
    """

    _tag_names = DPOTrainer._tag_names + ["dpo_plugin"]

    def __init__(self, model, ref_model=None, args: PreferenceConfig | None = None, *pos, peft_config=None, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = PreferenceConfig(f"{model_name.split('/')[-1]}-DPO")
        needs_copy = (
            ref_model is None
            and isinstance(model, PreTrainedModel)
            and not is_peft_model(model)
            and peft_config is None
            and not args.precompute_ref_log_probs
        )
        if needs_copy:
            ref_model = frozen_copy(model)
        super().__init__(model, ref_model, args, *pos, peft_config=peft_config, **kwargs)
        if getattr(args, "reference_free", False):
            self.ref_model = None  # TRL insists on building one; reference-free DPO never runs it

    @property
    def _plugin_loss_type(self) -> str | None:
        return getattr(self.args, "plugin_loss_type", None)

    def _compute_loss(self, model, inputs, return_outputs):
        loss_type = self._plugin_loss_type
        if loss_type is None:
            return super()._compute_loss(model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True

        if loss_type in TDPO_LOSS_TYPES:
            policy = self._token_level_pass(model, model_kwargs, inputs["completion_mask"])
        else:
            policy = self._sequence_pass(model, model_kwargs, inputs["completion_mask"])
        chosen_logps, rejected_logps = policy.logps.chunk(2)
        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs, policy)
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
            return dpo_loss(chosen_logratios, rejected_logratios, args.beta, args.label_smoothing)
        if loss_type == "ipo":
            lengths = completion_lengths(inputs["completion_mask"]).chunk(2) if args.ipo_normalize else (None, None)
            return ipo_loss(chosen_logratios, rejected_logratios, args.beta, *lengths)
        chosen_kl, rejected_kl = policy.seq_kl.chunk(2)
        alpha = args.tdpo_alpha if loss_type == "tdpo2" else None
        return tdpo_loss(chosen_logratios, rejected_logratios, chosen_kl, rejected_kl, args.beta, alpha)

    def _sequence_pass(self, model, model_kwargs, completion_mask) -> _PolicyPass:
        """Summed completion log-probs through TRL's fused LM head, which never builds (B, L, V) logits."""
        labels = model_kwargs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        mask = completion_mask[:, 1:]
        seq_len = mask.size(1)  # prompt-learning PEFT prepends virtual tokens: keep the real positions
        log_probs = outputs.log_probs[:, -seq_len:]
        return _PolicyPass(
            logps=log_probs.sum(dim=1),
            mask=mask,
            entropy=outputs.entropy[:, -seq_len:].detach(),
            mean_logits=outputs.mean_logits[:, -seq_len:].detach(),
            is_top1=outputs.is_top1[:, -seq_len:],
            aux_loss=getattr(outputs, "aux_loss", None),
        )

    def _token_level_pass(self, model, model_kwargs, completion_mask) -> _PolicyPass:
        """Completion log-probs and SeqKL(y) = Σ_t KL(π_ref(·|x,y<t) ‖ π_θ(·|x,y<t)) for TDPO.

        Both models return logits only from the first completion position of the batch on (`logits_to_keep`), and the
        full-vocabulary log-softmax is taken only at completion positions.
        """
        mask = completion_mask[:, 1:]
        has_completion = mask.any(dim=0).nonzero()
        start = int(has_completion[0]) if len(has_completion) else mask.size(1) - 1
        keep = mask.size(1) + 1 - start  # logits for positions start … L-1; the last one predicts nothing
        mask = mask[:, start:]
        at_completion = mask.bool()
        labels = model_kwargs["input_ids"][:, start + 1 :][at_completion]

        outputs = model(**model_kwargs, logits_to_keep=keep)
        policy_logits = outputs.logits[:, :-1][at_completion]
        ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
        with torch.no_grad(), self._reference_context():
            ref_logits = self._reference_model()(**ref_kwargs, logits_to_keep=keep).logits[:, :-1][at_completion]

        def per_token(values: Tensor) -> Tensor:
            return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(at_completion, values)

        with torch.no_grad():
            log_probs = torch.log_softmax(policy_logits.float(), dim=-1)
            entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
            is_top1 = policy_logits.argmax(dim=-1) == labels
        return _PolicyPass(
            logps=per_token(token_logps(policy_logits, labels)).sum(dim=1),
            mask=mask,
            entropy=per_token(entropy),
            mean_logits=per_token(policy_logits.detach().float().mean(dim=-1)),
            is_top1=per_token(is_top1),
            aux_loss=getattr(outputs, "aux_loss", None),
            seq_kl=per_token(token_kl(ref_logits, policy_logits)).sum(dim=1),
            ref_logps=per_token(token_logps(ref_logits, labels)).sum(dim=1),
        )

    def _reference_model(self):
        return self.ref_model if self.ref_model is not None else self.model

    def _reference_context(self):
        """Gradient checkpointing off, and for a PEFT policy with no `ref_model`, its adapters disabled."""
        stack = contextlib.ExitStack()
        stack.enter_context(disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs))
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            stack.enter_context(use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None))
        return stack

    def _reference_logps(self, inputs, policy: _PolicyPass) -> tuple[Tensor, Tensor]:
        """log π_ref(y|x) for chosen and rejected: zero (reference-free), precomputed, from the token-level pass's
        reference logits (TDPO), or from one reference forward through TRL's fused head."""
        if policy.ref_logps is not None:
            return policy.ref_logps.chunk(2)
        if self.args.reference_free:
            zeros = torch.zeros_like(policy.logps).chunk(2)
            return zeros[0], zeros[1]
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        return self.compute_ref_log_probs(self._reference_model(), inputs)

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
