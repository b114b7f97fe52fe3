"""The device models run on when nothing says otherwise, and how reports name it."""

import torch


def default_device() -> str:
    """Where models run when nothing says otherwise: "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    """The device a measurement ran on, for reports: the CUDA GPU's name, or the CPU and its torch threads."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} torch threads"
