"""Preference data: the real offline assets, built-in datasets, accepted formats, validation and loading."""

from .assets import (
    AssetUnavailable,
    LabelledText,
    cache_dir,
    ensure_assets,
    polarity_paths,
    read_polarity,
    resolve_model,
    smollm2_path,
)
from .builtin import BUILTIN_DATASETS, load_builtin
from .formats import PreferenceFormat, detect_format, normalize_preference_dataset
from .loading import load_preference_dataset
from .validation import InvalidPreferenceData, validate_preference_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "AssetUnavailable",
    "InvalidPreferenceData",
    "LabelledText",
    "PreferenceFormat",
    "cache_dir",
    "detect_format",
    "ensure_assets",
    "load_builtin",
    "load_preference_dataset",
    "normalize_preference_dataset",
    "polarity_paths",
    "read_polarity",
    "resolve_model",
    "smollm2_path",
    "validate_preference_dataset",
]
