"""`dpo-plugin bench {memory,speed} --config recipe.yaml [--key value ...]`: measurements any user can rerun."""

from .bench_memory import memory
from .bench_speed import speed

BENCHMARKS = {"memory": memory, "speed": speed}


def bench(argv: list[str]) -> dict:
    """Run the benchmark named by `argv[0]` on the recipe the rest of `argv` describes."""
    if not argv or argv[0] not in BENCHMARKS:
        raise SystemExit(f"usage: dpo-plugin bench {{{', '.join(BENCHMARKS)}}} --config recipe.yaml [--key value ...]")
    return BENCHMARKS[argv[0]](argv[1:])
