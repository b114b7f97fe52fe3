"""Check every row of a preference dataset before training, so bad data fails early and by name."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ..utils.errors import UserError

logger = logging.getLogger("dpo_plugin")

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
SKIP_HINT = "Fix the data, or set `skip_invalid_rows: true` in the recipe to drop invalid rows (counts are logged)."
TOKENIZE_BATCH_SIZE = 512
STRING_EXPECTED = "a non-empty string, as the prompt is a string"
MESSAGES_EXPECTED = (
    "a non-empty list of messages {'role': str, 'content': non-empty str} (an assistant turn may carry tool_calls "
    "instead of content), as the prompt is a message list"
)
TRUNCATION_MODES = ("keep_start", "keep_end")
# Per-row columns TRL passes to the chat template when it tokenizes a conversational prompt.
TEMPLATE_COLUMNS = ("tools", "chat_template_kwargs")


class InvalidPreferenceData(UserError, ValueError):
    """A preference dataset has rows that cannot be trained on; the message names the row and field."""


@dataclass(frozen=True)
class RowProblem:
    """Why one row is invalid: ``reason`` is short and shared by similar rows, so it can be counted."""

    row: int
    field: str
    reason: str
    expected: str

    def describe(self) -> str:
        return f"row {self.row}, field {self.field!r}: {self.reason}; expected {self.expected}"


def validate_preference_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    skip_invalid: bool = False,
    name: str = "train",
    truncation_mode: str = "keep_start",
) -> Dataset:
    """Return ``dataset`` if every row is trainable, else raise ``InvalidPreferenceData`` naming the first bad row.

    A row is trainable when prompt, chosen and rejected are all non-empty strings or all non-empty message lists
    (each message a dict with a non-empty string ``role`` and ``content``), chosen differs from rejected, and,
    when ``max_length`` is set and ``truncation_mode`` is ``keep_start`` (TRL's default), the prompt tokenized as TRL
    does (chat template with the generation prompt for messages, plain tokenization for strings) is shorter than
    ``max_length``, leaving room for the completion. With ``keep_end`` TRL cuts long rows from the left, so their
    completions survive and such rows are kept, as TRL keeps them.
    With ``skip_invalid`` the bad rows are dropped instead and counted per reason in the log.
    """
    missing = [column for column in PREFERENCE_COLUMNS if column not in dataset.column_names]
    if missing:
        raise InvalidPreferenceData(
            f"The {name!r} dataset lacks the column(s) {missing}; it has {dataset.column_names}. "
            f"A preference dataset needs {list(PREFERENCE_COLUMNS)} (see dpo_plugin.data.formats for accepted layouts)."
        )
    if truncation_mode not in TRUNCATION_MODES:
        raise InvalidPreferenceData(f"truncation_mode {truncation_mode!r} is not one of {list(TRUNCATION_MODES)}.")
    limit = max_length if truncation_mode == "keep_start" else None
    template_columns = [column for column in TEMPLATE_COLUMNS if column in dataset.column_names]
    problems = _find_problems(dataset.select_columns([*PREFERENCE_COLUMNS, *template_columns]), tokenizer, limit)
    if not problems:
        return dataset
    counts = Counter(f"{problem.field}: {problem.reason}" for problem in problems)
    summary = ", ".join(f"{count} x {reason}" for reason, count in counts.most_common())
    if not skip_invalid:
        raise InvalidPreferenceData(
            f"The {name!r} dataset has {len(problems)} invalid row(s) of {len(dataset)} ({summary}). "
            f"First: {problems[0].describe()}. {SKIP_HINT}"
        )
    if len(problems) == len(dataset):
        raise InvalidPreferenceData(
            f"Every row of the {name!r} dataset is invalid ({summary}); nothing is left to train on."
        )
    logger.warning(
        "Dropped %d invalid row(s) of %d from the %r dataset: %s", len(problems), len(dataset), name, summary
    )
    invalid_rows = {problem.row for problem in problems}
    return dataset.select([row for row in range(len(dataset)) if row not in invalid_rows])


def report_truncated_pairs(dataset, max_length: int | None, truncation_mode: str) -> int:
    """The pairs of a tokenized dataset (TRL's `prompt_ids`, `chosen_ids`, `rejected_ids`) longer than `max_length`
    in prompt + completion tokens, which TRL's collator cuts to it: counted and said in one warning, with the longest
    pair's length, instead of cut silently. 0 without a limit or a tokenized map-style dataset."""
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    if max_length is None or not hasattr(dataset, "column_names") or not set(columns) <= set(dataset.column_names):
        return 0
    import pyarrow.compute as pc

    arrow = dataset.with_format("arrow")  # the rows as selected (an index mapping respected), without copying
    prompt, chosen, rejected = (pc.list_value_length(arrow[column]) for column in columns)
    lengths = pc.add(prompt, pc.max_element_wise(chosen, rejected)).to_pylist()  # counted in Arrow, not Python lists
    cut = sum(length > max_length for length in lengths)
    if cut:
        end = "end of the completions" if truncation_mode == "keep_start" else "start of the prompts"
        logger.warning(
            "%d of %d pairs are longer than max_length=%d tokens (the longest: %d), so training cuts the %s: raise "
            "max_length to keep them whole.",
            cut,
            len(lengths),
            max_length,
            max(lengths),
            end,
        )
    return cut


def _find_problems(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> list[RowProblem]:
    """The first problem of each invalid row, in row order."""
    problems = []
    conversational = isinstance(dataset[0]["prompt"], list) if len(dataset) else False  # row 0 sets the format
    for start in range(0, len(dataset), TOKENIZE_BATCH_SIZE):
        rows = dataset[start : start + TOKENIZE_BATCH_SIZE]
        batch = [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]
        batch_problems = {
            index: problem
            for index, row in enumerate(batch)
            if (problem := _row_problem(row, start + index, conversational))
        }
        if max_length is not None:
            well_formed = [index for index in range(len(batch)) if index not in batch_problems]
            prompt_lengths = _prompt_token_counts([batch[index] for index in well_formed], tokenizer)
            for index, length in zip(well_formed, prompt_lengths, strict=True):
                if length >= max_length:
                    batch_problems[index] = RowProblem(
                        start + index,
                        "prompt",
                        "too long for max_length",
                        f"fewer than {max_length} tokens, found {length}",
                    )
        problems += [batch_problems[index] for index in sorted(batch_problems)]
    return problems


def _row_problem(row: dict[str, Any], index: int, conversational: bool) -> RowProblem | None:
    """The first structural problem of one row, or ``None``: every row must be in the format of row 0, message
    lists (`conversational`) or strings, as TRL tokenizes a dataset in one format."""
    if isinstance(row["prompt"], list) != conversational and row["prompt"] is not None:
        found = "a message list" if isinstance(row["prompt"], list) else f"a {type(row['prompt']).__name__}"
        kind = "message lists" if conversational else "strings"
        return RowProblem(index, "prompt", f"{found} where row 0 has {kind}", f"{kind} in every row, as in row 0")
    for field in PREFERENCE_COLUMNS:
        if problem := _field_problem(row[field], conversational):
            reason, expected = problem
            return RowProblem(index, field, reason, expected)
    if row["chosen"] == row["rejected"]:
        return RowProblem(index, "chosen", "identical to rejected", "chosen and rejected completions that differ")
    return None


def _field_problem(value: Any, conversational: bool) -> tuple[str, str] | None:
    """``(reason, expected)`` when one field is unusable, else ``None``."""
    expected = MESSAGES_EXPECTED if conversational else STRING_EXPECTED
    if value is None:
        return "missing (None)", expected
    if not conversational:
        if not isinstance(value, str):
            return f"{type(value).__name__} instead of a string", expected
        return None if value.strip() else ("empty string", expected)
    if not isinstance(value, list):
        return f"{type(value).__name__} instead of a message list", expected
    if not value:
        return "empty message list", expected
    for message in value:
        if not isinstance(message, dict) or not _is_filled_string(message.get("role")):
            return "message without a role", expected
        if not _is_filled_string(message.get("content")) and not message.get("tool_calls"):
            return "message with empty or non-string content and no tool_calls", expected
    return None


def _prompt_token_counts(rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token counts of the rows' prompts, tokenized the way TRL's ``DPOTrainer`` tokenizes them: messages through the
    chat template with the generation prompt, the row's ``tools`` and ``chat_template_kwargs``; strings plainly."""
    if not rows:
        return []
    prompts = [row["prompt"] for row in rows]
    if not isinstance(prompts[0], list):
        return [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    if not any(row.get(column) for row in rows for column in TEMPLATE_COLUMNS):
        encoded = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        return [len(ids) for ids in encoded["input_ids"]]
    counts = []
    for row in rows:
        tools = json.loads(row["tools"]) if isinstance(row.get("tools"), str) else row.get("tools")
        kwargs = {"tools": tools, **(row.get("chat_template_kwargs") or {})}
        encoded = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True, **kwargs
        )
        counts.append(len(encoded["input_ids"]))
    return counts


def _is_filled_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
