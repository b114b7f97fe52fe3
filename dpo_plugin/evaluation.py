"""Held-out preference accuracy of the reference and the trained policy, from summed completion log-probs."""

import math
from dataclasses import asdict, dataclass

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .logprobs import sequence_logps


@dataclass
class Accuracy:
    """A fraction of pairs ranked correctly, with its 95% Wilson score interval."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, correct: torch.Tensor) -> "Accuracy":
        n, p, z = correct.numel(), correct.float().mean().item(), 1.959964
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return cls(p, centre - half, centre + half)

    def __str__(self) -> str:
        return f"{100 * self.value:5.1f}%  [{100 * self.low:4.1f}, {100 * self.high:4.1f}]"


@dataclass
class HeldOutReport:
    """How often each ranking puts the human-preferred completion first, over `pairs` held-out pairs.

    `reference`: log π_ref(y_w) > log π_ref(y_l) (the untrained model's likelihood);
    `policy`: implicit reward β Δ(y_w) > β Δ(y_l), i.e. Δ(y_w) > Δ(y_l);
    `policy_likelihood`: log π_θ(y_w) > log π_θ(y_l).
    """

    pairs: int
    reference: Accuracy
    policy: Accuracy
    policy_likelihood: Accuracy

    def table(self) -> str:
        rows = [
            ("reference, by log-likelihood", self.reference),
            ("trained policy, by implicit reward", self.policy),
            ("trained policy, by log-likelihood", self.policy_likelihood),
        ]
        lines = [f"Held-out preference accuracy on {self.pairs} pairs (95% Wilson interval)"]
        lines += [f"  {name:<36}{accuracy}" for name, accuracy in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_heldout(trainer, dataset: Dataset, batch_size: int = 16) -> HeldOutReport:
    """Rank held-out pairs with the trainer's reference and its trained policy.

    The pairs are tokenized and collated exactly as for training; the reference is the one the trainer trains against
    (a `ref_model`, or the PEFT policy with its adapters disabled).
    """
    if trainer.ref_model is None and not is_peft_model(trainer.model):
        raise ValueError(
            "Held-out evaluation needs the reference in memory, but this run keeps none (full fine-tuning with "
            "reference_free or precompute_ref_log_probs). Pass a ref_model, train LoRA adapters, or skip the "
            "evaluation."
        )
    prepared = trainer._prepare_dataset(dataset, trainer.processing_class, trainer.args, "held-out")
    loader = DataLoader(prepared, batch_size=batch_size, collate_fn=trainer.data_collator)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy.eval()
    reference_logps, policy_logps = [], []
    for batch in tqdm(loader, desc="Scoring held-out pairs", unit="batch"):
        batch = {key: value.to(trainer.accelerator.device) for key, value in batch.items()}
        with torch.no_grad(), trainer.accelerator.autocast():  # the precision training ran in, as for the reference
            policy_logps.append(sequence_logps(policy, trainer._model_kwargs(batch), batch["completion_mask"]).cpu())
        reference_logps.append(torch.cat(trainer.compute_ref_log_probs(trainer._reference_model(), batch)).cpu())
    ref_chosen, ref_rejected = _pairs(reference_logps)
    chosen, rejected = _pairs(policy_logps)
    return HeldOutReport(
        pairs=len(chosen),
        reference=Accuracy.of(ref_chosen > ref_rejected),
        policy=Accuracy.of(chosen - ref_chosen > rejected - ref_rejected),
        policy_likelihood=Accuracy.of(chosen > rejected),
    )


def _pairs(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each `[chosen; rejected]` batch and concatenate: (chosen, rejected) over all pairs."""
    halves = [batch.chunk(2) for batch in batches]
    return torch.cat([c for c, _ in halves]), torch.cat([r for _, r in halves])
