"""The RLHF baseline of the DPO paper's comparison: a Bradley–Terry reward model (TRL's `RewardTrainer`) and PPO."""
