"""Evaluation: log π(y|x) of text (`scoring`), language models as agents of the environments (`policies`), reward
functions (`rewards`), and held-out accuracy and sampled-completion reports through the environments (`heldout`)."""
