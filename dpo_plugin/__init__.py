"""dpo_plugin: DPO, cDPO, IPO and token-level DPO as a drop-in subclass of TRL's DPOTrainer."""

from .config import PreferenceConfig
from .trainer import PreferenceTrainer

__all__ = ["PreferenceConfig", "PreferenceTrainer"]
