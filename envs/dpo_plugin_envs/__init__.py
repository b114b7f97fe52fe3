"""Gymnasium environments over text datasets, for any model: only gymnasium, numpy and the standard library.

`dpo_plugin/PreferencePairs-v0` (pick the preferred of two completions) and `dpo_plugin/Completion-v0` (write a
completion, scored by reward functions), each with a native vector env for `gymnasium.make_vec`. Importing this
package registers them. It installs as `dpo_plugin_envs` (the repository keeps it in `envs/`); installing the
package also registers them when gymnasium is first imported.
"""

from gymnasium.envs.registration import register, registry

from .completion import CompletionEnv, CompletionVectorEnv, RewardFn
from .preference_pairs import PreferencePairsEnv, PreferencePairsVectorEnv
from .spaces import UnicodeText

__all__ = [
    "CompletionEnv",
    "CompletionVectorEnv",
    "PreferencePairsEnv",
    "PreferencePairsVectorEnv",
    "RewardFn",
    "UnicodeText",
    "register_envs",
]

_ENVS = {
    "dpo_plugin/PreferencePairs-v0": f"{__name__}.preference_pairs:PreferencePairs",
    "dpo_plugin/Completion-v0": f"{__name__}.completion:Completion",
}


def register_envs() -> None:
    """Register the environments with gymnasium; ids already registered are left as they are."""
    for env_id, entry_point in _ENVS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=f"{entry_point}Env", vector_entry_point=f"{entry_point}VectorEnv")


register_envs()
