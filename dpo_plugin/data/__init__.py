"""Preference data: the real offline assets, built-in datasets, accepted formats, validation and loading.

Names are exported lazily: `from dpo_plugin.data import resolve_model` imports `assets` alone.
"""

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "AssetUnavailable": "assets",
    "LabelledText": "assets",
    "cache_dir": "assets",
    "ensure_assets": "assets",
    "polarity_paths": "assets",
    "read_polarity": "assets",
    "resolve_model": "assets",
    "smollm2_path": "assets",
    "BUILTIN_DATASETS": "builtin",
    "load_builtin": "builtin",
    "PreferenceFormat": "formats",
    "detect_format": "formats",
    "normalize_preference_dataset": "formats",
    "first_rows": "loading",
    "load_preference_dataset": "loading",
    "load_prompt_dataset": "loading",
    "InvalidPreferenceData": "validation",
    "validate_preference_dataset": "validation",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
