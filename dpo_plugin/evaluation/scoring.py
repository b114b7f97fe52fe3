"""log π(y|x) of completions under a causal LM: tokenized as TRL tokenizes, batched, memoized by text."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from trl.data_utils import common_prefix_length, is_conversational, maybe_apply_chat_template

from ..objectives.logprobs import sequence_logps
from ..objectives.reader import CompletionReader, choose_reader
from ..trl_private import tokenize_as_trl

TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """A string prompt's token ids as TRL's `DPOTrainer` tokenizes it."""
    return tokenize_as_trl(tokenizer, prompt)["input_ids"]


def split_prompt_completion(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of a string prompt and its completion, exactly as TRL's `DPOTrainer` tokenizes string data.

    The prompt and prompt + completion are tokenized separately and the completion starts where the two diverge.
    Completions are taken as given: render conversational rows with `trl.apply_chat_template` first (that string is
    what TRL trains on), and append the EOS token yourself where TRL would (string datasets).
    """
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    full_ids = tokenize_as_trl(tokenizer, prompt + completion)["input_ids"]
    start = common_prefix_length(prompt_ids, full_ids)
    return full_ids[:start], full_ids[start:]


class SequenceScorer:
    """Summed completion log-probs log π(y|x) = Σ_t log π(y_t | x, y<t) under `model`.

    Sequences are truncated to `max_length` tokens keeping the start, as TRL's collator does, and scored inside
    `context()` (e.g. the training autocast, or a PEFT policy's adapters turned off to make it the reference).

    Text pairs (`__call__`, what ranking held-out pairs asks) are read as the trainer reads a batch: completions of
    one prompt two at a time in one `[prompt | first | second]` row (shared-prompt packing, where the model allows
    it), through the chunked head (`objectives/reader.py`), `batch_size` such rows a call, longest first; their
    scores are memoized, so policies that rank the same pairs share them. Token ids (`score_ids`, sampled
    completions) are read `batch_size` rows a call through full logits at completion positions.
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_length: int | None = None,
        batch_size: int = 16,
        context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.context = max_length, batch_size, context
        self._memo: dict[tuple[str, str], float] = {}
        self._pair_reader: CompletionReader | None = None

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """log π(completion | prompt) for each text pair, float32, shape (len(prompts),)."""
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
        keys = list(zip(prompts, completions, strict=True))
        missing = list(dict.fromkeys(key for key in keys if key not in self._memo))
        if missing:
            ids = [split_prompt_completion(self.tokenizer, prompt, completion) for prompt, completion in missing]
            self._memo.update(zip(missing, self._score_packed(ids).tolist(), strict=True))
        return torch.tensor([self._memo[key] for key in keys], dtype=torch.float32)

    @torch.no_grad()
    def _score_packed(self, ids: Sequence[tuple[list[int], list[int]]]) -> Tensor:
        """log π(y|x) of each (prompt ids, completion ids), float32: completions with the same prompt ids read two to
        a row as a `[first; second]` batch of the trainer's (`CompletionReader.sequence_logps`; a prompt's odd one
        out is read beside itself), the longest rows first (little padding)."""
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for index, (prompt, _) in enumerate(ids):
            by_prompt.setdefault(tuple(prompt), []).append(index)
        pairs = []
        for indices in by_prompt.values():
            indices += indices[-1:] * (len(indices) % 2)  # the odd one out beside itself
            pairs += zip(indices[0::2], indices[1::2], strict=True)
        pairs.sort(key=lambda pair: len(ids[pair[0]][0]) + len(ids[pair[0]][1]) + len(ids[pair[1]][1]), reverse=True)
        batches = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            rows = [first for first, _ in chunk] + [second for _, second in chunk]
            batches.append((rows, self._collate([ids[i][0] for i in rows], [ids[i][1] for i in rows])))
        reader = self._reader(batches[0][1])  # outside the context: choosing enters it itself
        scores = torch.empty(len(ids))
        bar = tqdm(batches, desc="Scoring", unit="call", leave=False, disable=len(batches) < 4)
        with self.context():
            for rows, batch in bar:
                completion_mask = batch.pop("completion_mask")
                scores[rows] = reader.sequence_logps(self.model, batch, completion_mask).float().cpu()
        return scores

    def _reader(self, model_kwargs: dict) -> CompletionReader:
        """How text pairs are read, chosen on the first batch (`choose_reader`): the chunked head where the model's
        head reproduces its logits, with shared-prompt packing."""
        if self._pair_reader is None:
            self._pair_reader = choose_reader(
                [(self.model, self.context, "scorer")], model_kwargs, chunked=True, block_size=None, share_prompt=True
            )
        return self._pair_reader

    @torch.no_grad()
    def score_ids(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]) -> Tensor:
        """log π(y|x) for token ids (e.g. sampled completions, scored on exactly the sampled tokens), float32."""
        scores = []
        for start in range(0, len(prompt_ids), self.batch_size):
            end = start + self.batch_size
            batch = self._collate(prompt_ids[start:end], completion_ids[start:end])
            completion_mask = batch.pop("completion_mask")
            with self.context():
                scores.append(sequence_logps(self.model, batch, completion_mask).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def _collate(self, prompt_ids, completion_ids) -> dict[str, Tensor]:
        """Right-padded `input_ids`, `attention_mask` and `completion_mask` on the model's device."""
        sequences, masks = [], []
        for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
            ids, is_completion = list(prompt) + list(completion), [0] * len(prompt) + [1] * len(completion)
            sequences.append(torch.tensor(ids[: self.max_length], dtype=torch.long))
            masks.append(torch.tensor(is_completion[: self.max_length], dtype=torch.long))
        device = self.model.device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return {
            "input_ids": pad_sequence(sequences, batch_first=True, padding_value=pad_id).to(device),
            "attention_mask": pad_sequence([torch.ones_like(s) for s in sequences], batch_first=True).to(device),
            "completion_mask": pad_sequence(masks, batch_first=True).to(device),
            "use_cache": False,
        }


def sampled_log_ratios(
    policy: SequenceScorer,
    reference: SequenceScorer,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
) -> Tensor:
    """log π(y|x) − log π_ref(y|x) of each completion y sampled from π, scored on exactly its sampled tokens (no
    retokenization, no padding): their mean estimates KL(π ‖ π_ref)."""
    return policy.score_ids(prompt_ids, completion_ids) - reference.score_ids(prompt_ids, completion_ids)


class FrozenScores:
    """log π(y|x) of given text pairs, scored once by `scorer` now and served from memory after: the reference of a
    run that holds none while training (precomputed log-probs), scored before the policy moves. A pair it was not
    given is a `KeyError`, never a score from whatever the model has become."""

    def __init__(self, scorer: SequenceScorer, prompts: Sequence[str], completions: Sequence[str]):
        scores = scorer(prompts, completions)
        self._scores = dict(zip(zip(prompts, completions, strict=True), scores.tolist(), strict=True))

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        return torch.tensor(
            [self._scores[pair] for pair in zip(prompts, completions, strict=True)], dtype=torch.float32
        )


def as_text(dataset, tokenizer):
    """Preference rows as the strings TRL tokenizes: conversational rows through the chat template (prompt with the
    generation prompt; completions the rest of the rendered conversation), string rows with EOS appended."""

    def render(row):
        if is_conversational(row):
            return maybe_apply_chat_template(row, tokenizer)
        eos = tokenizer.eos_token or ""
        return {key: row[key] if key == "prompt" or row[key].endswith(eos) else row[key] + eos for key in TEXT_COLUMNS}

    return dataset.map(render, desc="Rendering pairs as text")
