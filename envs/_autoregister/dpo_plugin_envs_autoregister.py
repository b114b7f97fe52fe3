"""Registers dpo_plugin's gymnasium environments the first time `gymnasium` is imported.

gymnasium 1.x no longer loads the `gymnasium.envs` entry points of installed plugins, so
`gymnasium.make("dpo_plugin/PreferencePairs-v0")` would fail unless `dpo_plugin_envs` had been imported first.
The `dpo_plugin_envs.pth` file installed beside this module calls `install()` at interpreter start; it only
adds an import hook (standard library, no gymnasium), and imports `dpo_plugin_envs` right after gymnasium has loaded.
"""

import importlib.util
import sys
import warnings


class _RegisterAfterGymnasium:
    """A `sys.meta_path` finder that lets gymnasium load normally, then imports `dpo_plugin_envs` (which registers)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("gymnasium")
        if spec is None or spec.loader is None:
            return spec
        load_gymnasium = spec.loader.exec_module

        def exec_module(module):
            load_gymnasium(module)
            try:
                importlib.import_module("dpo_plugin_envs")
            except Exception as error:  # never break `import gymnasium` for a broken plugin
                warnings.warn(f"dpo_plugin could not register its gymnasium environments: {error!r}", stacklevel=2)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Add the hook unless gymnasium is already imported (then nothing is pending) or the hook is in place."""
    if "gymnasium" in sys.modules or any(isinstance(f, _RegisterAfterGymnasium) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _RegisterAfterGymnasium())
