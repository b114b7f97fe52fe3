"""Running a model in eval mode for a while (no dropout while it samples or scores), its mode restored after."""

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def in_eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode inside the block; back in the mode it had, training or not, however the block ends."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
