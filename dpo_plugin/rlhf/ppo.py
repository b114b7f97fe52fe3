"""PPO with a KL penalty to a reference model, for causal LMs: the RLHF baseline of the DPO paper.

Laid out as CleanRL's single-file PPO, to be read top to bottom: the config (every hyperparameter a named field),
the token layout every forward pass shares, then `PPOTrainer`, whose every step is

1. rollout: `rollout_batch_size` prompts from `dpo_plugin/Completion-v0`, one completion each sampled from πθ by pure
   sampling at temperature 1 (so the log-probs PPO uses are those of the sampling distribution), scored by the
   environment's reward function;
2. with no gradient: the old log-probs log π_old(y_t), the reference's log πref(y_t) and the values V_t of the
   sampled tokens; per-token rewards (KL penalty on every token, the score at the last); GAE advantages and returns;
3. `ppo_epochs` passes over shuffled minibatches of `mini_batch_size` completions, minimizing
   policy_loss + vf_coef · value_loss, gradients clipped to `max_grad_norm`, AdamW.

The value head is a linear layer on the policy's last hidden state (shared trunk). The tensor maths is in `ppo_math`.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import gymnasium
import torch
from dpo_plugin_envs import RewardFn  # importing it registers the environments, also where the .pth hook is absent
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from ..evaluation.policies import CompletionSampler
from ..objectives.logprobs import IGNORE_INDEX, log_probs_from_logits, masked_sum, token_logps
from ..training.reference import choose_reference
from ..utils.atomic import staged_folder, write_json
from ..utils.errors import ConfigError, NonFiniteTrainingError
from ..utils.validation import check, integer_at_least, number_above, number_at_least, number_in
from .ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    masked_mean,
    token_entropy,
    token_rewards,
    whiten,
)

VALUE_HEAD_NAME = "value_head.pt"
STATE_NAME = "ppo_state.json"


PPO_RULES = {
    "steps": integer_at_least(1),
    "rollout_batch_size": integer_at_least(1),
    "mini_batch_size": integer_at_least(1),
    "ppo_epochs": integer_at_least(1),
    "learning_rate": number_above(0.0),
    "kl_coef": number_at_least(0.0),
    "gamma": number_in(0.0, 1.0),
    "lam": number_in(0.0, 1.0),
    "clip_range": number_above(0.0),
    "clip_range_value": number_above(0.0),
    "vf_coef": number_at_least(0.0),
    "max_grad_norm": number_above(0.0),
    "max_new_tokens": integer_at_least(1),
    "logging_steps": integer_at_least(1),
    "save_steps": integer_at_least(0, "(0: only the final save)"),
    "eval_steps": integer_at_least(0, "(0: only before training and at the end)"),
}


@dataclass
class PPOConfig:
    """Hyperparameters of `PPOTrainer`, one named field each; parsed from YAML by `trl.TrlParser`, validated here."""

    output_dir: str = field(
        metadata={"help": "Folder of the final save (adapters or model, tokenizer, value head, state) and checkpoints."}
    )
    steps: int = field(default=100, metadata={"help": "Number of PPO updates, each on one fresh rollout."})
    rollout_batch_size: int = field(
        default=16, metadata={"help": "Prompts per rollout (one sampled completion each): the environment's num_envs."}
    )
    mini_batch_size: int = field(
        default=4, metadata={"help": "Completions per gradient step; must divide rollout_batch_size."}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout, in shuffled minibatches."})
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "AdamW learning rate (constant) of the trainable policy weights and value head."},
    )
    kl_coef: float = field(
        default=0.05,
        metadata={"help": "β of the per-token penalty −β (log πθ(y_t) − log πref(y_t)) added to the reward."},
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount γ over completion tokens, in [0, 1]."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ, in [0, 1] (0: one-step TD, 1: Monte Carlo)."})
    clip_range: float = field(default=0.2, metadata={"help": "ε of the policy ratio clip, clip(ρ, 1 − ε, 1 + ε); > 0."})
    clip_range_value: float = field(
        default=0.2, metadata={"help": "ε_v of the value clip, clip(V, V_old − ε_v, V_old + ε_v); > 0."}
    )
    vf_coef: float = field(
        default=0.1, metadata={"help": "Weight of the value loss: policy_loss + vf_coef · value_loss."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this value; > 0."})
    max_new_tokens: int = field(
        default=64, metadata={"help": "Longest completion, in tokens; a completion also ends after its first EOS."}
    )
    whiten_advantages: bool = field(
        default=True,
        metadata={"help": "Normalize each rollout's advantages to mean 0, variance 1 over its completion tokens."},
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of torch (value head, sampling, minibatch order) and of the env's prompts."}
    )
    logging_steps: int = field(
        default=1,
        metadata={"help": "Append a log entry every this many steps (and at the last), averaging the steps since."},
    )
    save_steps: int = field(
        default=0,
        metadata={"help": "Save `output_dir/checkpoint-<step>` every this many steps; 0: only the final save."},
    )
    eval_steps: int = field(
        default=0,
        metadata={"help": "Call eval_fn every this many steps, besides before training and at the end; 0: only those."},
    )

    def __post_init__(self):
        check(self, PPO_RULES)
        if self.rollout_batch_size % self.mini_batch_size:
            raise ConfigError(
                f"PPOConfig.mini_batch_size must divide rollout_batch_size={self.rollout_batch_size}, "
                f"got {self.mini_batch_size}."
            )


@dataclass
class TokenBatch:
    """Prompt + completion rows laid out so that the completions of all rows share the last T columns.

    Prompts are left-padded to P tokens and completions right-padded to T: `input_ids` (B, P + T). `position_ids`
    count real tokens only, as `generate` numbers a left-padded batch, so a row's log-probs do not depend on its
    padding. `labels` (B, T) are the completion ids (−100 on padding) and `mask` (B, T) is 1 on completion tokens.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    labels: Tensor
    mask: Tensor

    @classmethod
    def of(cls, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int, device):
        prompts = _padded(prompt_ids, pad_id, left=True)
        labels = _padded(completion_ids, IGNORE_INDEX)
        mask = (labels != IGNORE_INDEX).long()
        input_ids = torch.cat([prompts, labels.masked_fill(mask == 0, pad_id)], dim=1)
        attention_mask = torch.cat([_padded([[1] * len(ids) for ids in prompt_ids], 0, left=True), mask], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return cls(*(tensor.to(device) for tensor in (input_ids, attention_mask, position_ids, labels, mask)))

    def rows(self, index: Tensor):
        """The same batch (or rollout) restricted to rows `index`."""
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _padded(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> Tensor:
    """Rows of ids as one (B, max length) long tensor, padded with `value` on the right (or the left)."""
    tensors = [torch.tensor(row[::-1] if left else row, dtype=torch.long) for row in rows]
    padded = pad_sequence(tensors, batch_first=True, padding_value=value)
    return padded.flip(1) if left else padded


def completion_forward(model, batch: TokenBatch) -> tuple[Tensor, Tensor]:
    """One forward pass; the logits (B, T, V) and last hidden states (B, T, H) at the T positions that predict the
    completion tokens: position P − 1 + t predicts completion token t, so log-probs and values share an index."""
    completion_length = batch.labels.size(1)
    outputs = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=completion_length + 1,  # the last kept position predicts past the sequence
        output_hidden_states=True,
        use_cache=False,
    )
    return outputs.logits[:, :-1], outputs.hidden_states[-1][:, -completion_length - 1 : -1]


@dataclass
class Rollout(TokenBatch):
    """A rollout's token batch with what PPO keeps of it: per-token (B, T) tensors, 0 on padding, and scores (B,)."""

    scores: Tensor
    old_logps: Tensor
    ref_logps: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor


class PPOTrainer:
    """PPO with a KL penalty to a reference, rolling out through `dpo_plugin/Completion-v0`.

    `policy` is a causal LM, normally a PEFT (LoRA) model. Without `ref_model` the reference is the PEFT policy with
    its adapters disabled, or a frozen copy of a non-PEFT policy. `prompts` is a `datasets.Dataset` with a string
    `prompt` column, used as is (no chat template). `reward_fn(prompts, completions) -> list[float]` scores the
    decoded completions; training uses the exact sampled token ids. `eval_fn(trainer) -> dict`, if given, runs before
    training, every `eval_steps` steps and at the end; its keys are logged with an `eval/` prefix.

    The policy is put in eval mode (no dropout) for the whole run, so the ratio ρ is exactly 1 before the first update
    of each rollout, as PPO's importance ratios assume.
    """

    def __init__(
        self,
        policy,
        tokenizer,
        reward_fn: RewardFn,
        prompts,
        config: PPOConfig,
        ref_model=None,
        eval_fn: Callable[[PPOTrainer], dict] | None = None,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token: set one (e.g. tokenizer.pad_token = tokenizer.eos_token)."
            )
        torch.manual_seed(config.seed)
        self.policy, self.tokenizer, self.config, self.eval_fn = policy, tokenizer, config, eval_fn
        self.device = policy.device
        self.value_head = torch.nn.Linear(policy.get_output_embeddings().in_features, 1).to(self.device)
        self.reference = choose_reference(policy, ref_model)
        self.sampler = CompletionSampler(policy, tokenizer, {"max_new_tokens": config.max_new_tokens})
        self.env = gymnasium.make_vec(
            "dpo_plugin/Completion-v0",
            num_envs=config.rollout_batch_size,
            vectorization_mode="vector_entry_point",
            dataset=prompts,
            reward_fn=reward_fn,
            order="random",
            max_completion_length=sys.maxsize,  # max_new_tokens bounds the tokens, not the characters
        )
        self.observations, _ = self.env.reset(seed=config.seed)
        self.trainable = [p for p in policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.log_history: list[dict] = []
        self.step = 0
        self.train_seconds: float | None = None

    def values(self, hidden_states: Tensor) -> Tensor:
        """V_t = value_head(h_t), (B, T), from the hidden states at the positions predicting completion tokens."""
        return self.value_head(hidden_states.float()).squeeze(-1)

    @torch.no_grad()
    def rollout(self) -> tuple[Rollout, dict[str, float]]:
        """Sample a completion per environment prompt, score it with `env.step`, and compute everything PPO's update
        needs; returns the rollout and its metrics."""
        config = self.config
        samples = self.sampler.sample(list(self.observations))
        self.observations, scores, *_ = self.env.step(tuple(samples.texts))
        batch = TokenBatch.of(samples.prompt_ids, samples.completion_ids, self.tokenizer.pad_token_id, self.device)
        logits, hidden_states = completion_forward(self.policy, batch)
        log_probs = log_probs_from_logits(logits)
        old_logps = token_logps(log_probs, batch.labels)
        values = self.values(hidden_states) * batch.mask
        with self.reference.context():
            ref_logits, _ = completion_forward(self.reference.model, batch)
        ref_logps = token_logps(log_probs_from_logits(ref_logits), batch.labels)
        scores = torch.as_tensor(scores, dtype=torch.float32, device=self.device)
        rewards = token_rewards(old_logps, ref_logps, scores, batch.mask, config.kl_coef)
        advantages, returns = generalized_advantages(rewards, values, batch.mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = whiten(advantages, batch.mask)
        rollout = Rollout(
            **vars(batch),
            scores=scores,
            old_logps=old_logps,
            ref_logps=ref_logps,
            values=values,
            advantages=advantages,
            returns=returns,
        )
        kl = masked_sum(old_logps - ref_logps, batch.mask)
        total_reward = masked_sum(rewards, batch.mask)
        metrics = {
            "score/mean": scores.mean(),
            "score/std": scores.std(correction=0),
            "kl/mean": kl.mean(),
            "reward/non_score": (total_reward - scores).mean(),
            "reward/total": total_reward.mean(),
            "policy/entropy": masked_mean(token_entropy(log_probs), batch.mask),
            "completion_length": batch.mask.sum(dim=1).float().mean(),
        }
        return rollout, {key: value.item() for key, value in metrics.items()}

    def update(self, rollout: Rollout) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled minibatches, one AdamW step each; returns the losses and diagnostics
        averaged over the minibatches. Raises `NonFiniteTrainingError` before a step with a NaN/inf loss or gradient."""
        config = self.config
        history = defaultdict(list)
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(rollout.scores), generator=self.shuffle).to(self.device)
            for rows in order.split(config.mini_batch_size):
                batch = rollout.rows(rows)
                logits, hidden_states = completion_forward(self.policy, batch)
                logps = token_logps(log_probs_from_logits(logits), batch.labels)
                policy = clipped_policy_loss(logps, batch.old_logps, batch.advantages, batch.mask, config.clip_range)
                value = clipped_value_loss(
                    self.values(hidden_states), batch.values, batch.returns, batch.mask, config.clip_range_value
                )
                loss = policy.loss + config.vf_coef * value.loss
                self._check_finite("loss", loss)
                self.optimizer.zero_grad()
                loss.backward()
                self._check_finite(
                    "gradient norm", torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
                )
                self.optimizer.step()
                minibatch = {
                    "loss/policy": policy.loss,
                    "loss/value": value.loss,
                    "policy/clipfrac": policy.clipfrac,
                    "policy/approx_kl": policy.approx_kl,
                    "value/clipfrac": value.clipfrac,
                }
                for key, metric in minibatch.items():
                    history[key].append(metric.item())
        return {key: sum(values) / len(values) for key, values in history.items()}

    def _check_finite(self, what: str, value: Tensor) -> None:
        if not torch.isfinite(value):
            raise NonFiniteTrainingError(
                f"Non-finite PPO {what} ({value.item()}) at step {self.step}: training stopped before the weights were "
                "updated. Lower learning_rate or max_grad_norm, and check that reward_fn's scores are of moderate size."
            )

    def train(self) -> list[dict]:
        """Run `config.steps` PPO steps, logging, evaluating and checkpointing as configured, then save to
        `output_dir`; returns `log_history`. `train_seconds` holds the wall time of the whole run."""
        config, start = self.config, time.perf_counter()
        self.policy.eval()
        if self.eval_fn is not None:
            self.log_history.append({"step": self.step, **self.evaluate()})
        unlogged: list[dict[str, float]] = []
        with tqdm(total=config.steps, desc="PPO", unit="step") as progress:
            for step in range(self.step + 1, config.steps + 1):
                self.step, step_start = step, time.perf_counter()
                rollout, metrics = self.rollout()
                metrics.update(self.update(rollout))
                metrics.update(
                    learning_rate=self.optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - step_start
                )
                unlogged.append(metrics)
                progress.set_postfix(score=f"{metrics['score/mean']:.3f}", kl=f"{metrics['kl/mean']:.3f}")
                progress.update()
                last = step == config.steps
                entry = {"step": step}
                if last or step % config.logging_steps == 0:
                    entry.update(_mean_metrics(unlogged))
                    unlogged = []
                if self.eval_fn is not None and (last or _every(step, config.eval_steps)):
                    entry.update(self.evaluate())
                if len(entry) > 1:
                    self.log_history.append(entry)
                if _every(step, config.save_steps):
                    self.save(Path(config.output_dir) / f"checkpoint-{step}")
        self.train_seconds = time.perf_counter() - start
        self.save(Path(config.output_dir))
        return self.log_history

    def evaluate(self) -> dict[str, float]:
        """`eval_fn(self)` with its keys prefixed by `eval/`."""
        return {f"eval/{key}": value for key, value in self.eval_fn(self).items()}

    def save(self, target: Path) -> None:
        """Write the policy (`save_pretrained`: adapters for PEFT), tokenizer, value head and `ppo_state.json` (step,
        config, log history, train_seconds) to `target` whole or not at all, through a hidden staging folder."""
        with staged_folder(target) as staging:
            self.policy.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            torch.save(self.value_head.state_dict(), staging / VALUE_HEAD_NAME)
            state = {
                "step": self.step,
                "config": asdict(self.config),
                "log_history": self.log_history,
                "train_seconds": self.train_seconds,
            }
            write_json(staging / STATE_NAME, state)


def _mean_metrics(entries: list[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the steps in `entries`."""
    return {key: sum(entry[key] for entry in entries) / len(entries) for key in entries[0]}


def _every(step: int, interval: int) -> bool:
    """Whether `step` is a multiple of `interval` (never, for an interval of 0)."""
    return interval > 0 and step % interval == 0
