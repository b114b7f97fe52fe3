"""Building the frozen reference model π_ref deliberately, instead of letting TRL reload it from disk."""

import copy
import logging

from transformers import PreTrainedModel

logger = logging.getLogger("dpo_plugin")


def frozen_copy(policy: PreTrainedModel) -> PreTrainedModel:
    """π_ref = a frozen copy of the policy as it is in memory now (eval mode, no gradients).

    TRL, given no reference, reloads `policy.config._name_or_path` from disk: a policy changed after loading would
    silently get another reference, and a model built in memory would fail. A copy is exactly the policy passed in.
    """
    reference = copy.deepcopy(policy).eval()
    reference.requires_grad_(False)
    logger.info(
        "Reference model: a frozen copy of the policy passed to the trainer (checkpoint %r).",
        policy.config._name_or_path or "built in memory",
    )
    return reference
