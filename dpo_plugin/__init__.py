"""dpo_plugin: DPO, cDPO, IPO and token-level DPO as a drop-in subclass of TRL's DPOTrainer, offline or on-policy.

`from dpo_plugin import PreferenceConfig, PreferenceTrainer` imports TRL on first use of either name, not before.
The package's layout and the direction of its imports are described in docs/architecture.md.
"""

from .utils.lazy import lazy_exports

_EXPORTS = {
    "PreferenceConfig": "training.config",
    "PreferenceTrainer": "training.trainer",
    "OnlinePreferenceConfig": "online.config",
    "OnlinePreferenceTrainer": "online.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
