"""How the memory benchmarks measure a training run: resident memory settled before it (every weight paged in, freed
heap returned), the peak resident memory sampled while it runs, peak CUDA memory and wall time. `bench memory` and
`bench heads` both measure with `measure_training`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

MB = 1e6


def synchronized_now() -> float:
    """`time.perf_counter()` once the GPU (if any) has finished the work queued so far."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class TrainingMeasurement:
    """What `measure_training` saw: RSS before training (every weight resident), the peak RSS and peak CUDA memory
    while training (None without a GPU), and the wall time of `trainer.train()`."""

    setup_rss_bytes: int
    peak_rss_bytes: int
    peak_cuda_bytes: int | None
    seconds: float


def measure_training(trainer) -> TrainingMeasurement:
    """Run `trainer.train()` and measure it (`TrainingMeasurement`)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    setup_rss = settled_rss_bytes(trainer.model, trainer.ref_model)
    started = time.perf_counter()
    with PeakRSS() as training_peak:
        trainer.train()
    seconds = time.perf_counter() - started
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return TrainingMeasurement(setup_rss, training_peak.bytes, cuda, seconds)


def settled_rss_bytes(*models) -> int:
    """RSS with every weight of `models` resident and freed heap returned: the baseline that training's growth is
    measured from. Weights loaded from safetensors are memory-mapped and paged in only when first read, which would
    otherwise count a model's own bytes (1 GB for Gemma-3-270M in float32) as growth during the first step."""
    with torch.no_grad():
        for model in models:
            for tensor in (*model.parameters(), *model.buffers()) if model is not None else ():
                tensor.detach().sum()  # reads every page; the result is a scalar
    release_freed_memory()  # loading and the gap measurement free memory that glibc would otherwise keep
    return current_rss_bytes()


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc `malloc_trim`), so RSS reflects what is held, not what was."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """The largest resident set size seen while the `with` block runs, sampled every `interval` seconds.

    Unlike `ru_maxrss` (the whole process's peak, model loading included), this is the peak of the block alone.
    """

    def __init__(self, interval: float = 0.005):
        self.interval, self.bytes = interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.bytes = max(self.bytes, current_rss_bytes())
            self._done.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.bytes = max(self.bytes, current_rss_bytes())
