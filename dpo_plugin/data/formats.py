"""Recognise the preference formats found on the hub and normalise them to TRL's explicit-prompt format.

The result always has ``prompt``, ``chosen`` and ``rejected`` columns that are either all strings or all
conversational message lists (``[{"role": ..., "content": ...}]``); other columns are kept as they are.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from datasets import Dataset
from trl.data_utils import maybe_extract_prompt

from ..utils.errors import UserError

Messages = list[dict[str, str]]

HH_TURN_MARKER = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class PreferenceFormat(str, Enum):
    """The accepted layouts of a preference dataset, each with what it looks like."""

    STANDARD = "standard: string columns prompt, chosen, rejected"
    CONVERSATIONAL = "conversational: message-list columns prompt, chosen, rejected"
    IMPLICIT_CONVERSATIONAL = (
        "implicit-prompt conversational: message-list columns chosen, rejected holding whole conversations "
        "that share the prompt turns (a string prompt column, if any, is ignored)"
    )
    HH_RLHF = "HH-RLHF transcripts: string columns chosen, rejected like '\\n\\nHuman: ...\\n\\nAssistant: ...'"
    IMPLICIT_STANDARD = (
        "implicit-prompt standard: string columns chosen, rejected that begin with the same prompt (no prompt "
        "column); split where they first differ, as TRL splits them"
    )


def detect_format(dataset: Dataset) -> PreferenceFormat:
    """The format of ``dataset``, judged from its columns and first row; ``ValueError`` if none fits."""
    columns = set(dataset.column_names)
    if len(dataset) > 0 and {"chosen", "rejected"} <= columns:
        first = dataset[0]
        chosen, prompt = first["chosen"], first.get("prompt")
        if _is_messages(chosen) and _is_messages(prompt):
            return PreferenceFormat.CONVERSATIONAL
        if _is_messages(chosen) and (prompt is None or isinstance(prompt, str)):
            return PreferenceFormat.IMPLICIT_CONVERSATIONAL
        if isinstance(chosen, str) and isinstance(prompt, str):
            return PreferenceFormat.STANDARD
        if isinstance(chosen, str) and "prompt" not in columns and HH_TURN_MARKER.search(chosen):
            return PreferenceFormat.HH_RLHF
        if isinstance(chosen, str) and isinstance(first["rejected"], str) and "prompt" not in columns:
            return PreferenceFormat.IMPLICIT_STANDARD
    accepted = "; ".join(f"({number}) {layout.value}" for number, layout in enumerate(PreferenceFormat, 1))
    raise UserError(
        f"Unrecognised preference dataset with {len(dataset)} rows and columns {sorted(columns)}. Accepted formats: "
        f"{accepted}. Rename or convert the columns to one of these."
    )


def normalize_preference_dataset(dataset: Dataset) -> Dataset:
    """``dataset`` in TRL's explicit-prompt format: prompt/chosen/rejected all strings or all message lists."""
    layout = detect_format(dataset)
    if layout in (PreferenceFormat.IMPLICIT_CONVERSATIONAL, PreferenceFormat.IMPLICIT_STANDARD):
        return dataset.map(maybe_extract_prompt, desc="Extracting the shared prompt")
    if layout is PreferenceFormat.HH_RLHF:
        return dataset.map(_hh_rlhf_to_conversation, with_indices=True, desc="Parsing HH-RLHF transcripts")
    return dataset


def _hh_rlhf_to_conversation(example: dict[str, Any], index: int) -> dict[str, Messages]:
    """Split HH-RLHF transcripts into the shared dialogue (prompt) and the final Assistant answers."""
    chosen = _parse_hh_transcript(example["chosen"], index, "chosen")
    rejected = _parse_hh_transcript(example["rejected"], index, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise UserError(
            f"Row {index}: the chosen and rejected HH-RLHF transcripts differ before their final Assistant turn; "
            "a preference pair must answer the same dialogue. Fix or remove this row."
        )
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def _parse_hh_transcript(transcript: str, index: int, field: str) -> Messages:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages, ending with an assistant turn."""
    head, *parts = HH_TURN_MARKER.split(transcript)
    speakers, contents = parts[0::2], parts[1::2]
    if head.strip() or len(speakers) < 2 or speakers[-1] != "Assistant":
        raise UserError(
            f"Row {index}, field {field!r}: not an HH-RLHF transcript. Expected turns '\\n\\nHuman: ...' and "
            f"'\\n\\nAssistant: ...' from the start, ending with an Assistant turn; got {transcript[:120]!r}."
        )
    return [
        {"role": HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(speakers, contents, strict=True)
    ]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]
