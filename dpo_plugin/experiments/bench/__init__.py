"""`dpo-plugin bench {memory,heads,kernels,phases,speed,sampling,online} --config recipe.yaml [--key value ...]`:
measurements any user can rerun; `sampling` (`sampling.py`) and `online` (`online.py`) take an online recipe: the
on-policy loop's sampler against today's and generate, and the loop's rounds against TRL's `OnlineDPOTrainer`.

`memory` (`memory.py`): what a quantized reference saves; `heads` (`heads.py`): the objective head's memory and time
against TRL's; `kernels` (`kernels.py`): the head alone against TRL's chunked kernels, the same work on the same
tensors; `phases` (`phases.py`): where a step's time goes, phase by phase; `speed` (`speed.py`): steps per second
against TRL's and a raw PyTorch loop. `measuring.py` measures a training run's memory for `memory` and `heads`,
`trl_contender.py` builds TRL's trainer for `heads` and `speed`, `flops.py` counts a step's FLOPs for `speed`.
"""

import importlib

# name -> the module whose function of the same name runs that benchmark (imported only when it runs)
BENCHMARKS = {
    "memory": "memory",
    "heads": "heads",
    "kernels": "kernels",
    "phases": "phases",
    "speed": "speed",
    "sampling": "sampling",
    "online": "online",
}


def bench(argv: list[str]) -> dict:
    """Run the benchmark named by `argv[0]` on the recipe the rest of `argv` describes."""
    if not argv or argv[0] not in BENCHMARKS:
        raise SystemExit(f"usage: dpo-plugin bench {{{', '.join(BENCHMARKS)}}} --config recipe.yaml [--key value ...]")
    module = importlib.import_module(f"{__name__}.{BENCHMARKS[argv[0]]}")
    return getattr(module, argv[0])(argv[1:])
