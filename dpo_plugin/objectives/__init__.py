"""The objectives as pure tensor maths: losses, per-token log-probs and KL, shared-prompt packing.

Nothing here imports TRL: `losses` and `logprobs` need only torch, so they can be read, tested and reused alone.
"""
