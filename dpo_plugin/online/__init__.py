"""On-policy (iterative) preference learning: each round the policy samples groups of completions through the grouped
`Completion-v0` environment, reward functions rank them, and `PreferenceTrainer` learns from the pairs."""
