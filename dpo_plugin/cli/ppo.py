"""`dpo-plugin ppo --config recipes/compare/ppo.yaml`: PPO against a reward model, the RLHF baseline."""

from __future__ import annotations

from ..evaluation.rewards import RewardModelReward
from ..rlhf.recipe import build_ppo_trainer, parse_ppo_recipe, training_prompts
from ..utils.errors import ConfigError
from ..utils.plots import plot_training_curves
from ..utils.run_folder import run_folder


def ppo(argv: list[str]) -> list[dict]:
    """PPO against a reward model (`recipes/ppo.yaml`): writes the policy, value head, state and a training plot
    into output_dir, held for this run alone (`run_folder`)."""
    script_args, ppo_config, model_args = parse_ppo_recipe(argv)
    if not script_args.reward_model_name_or_path:
        raise ConfigError(
            "reward_model_name_or_path is required: a sequence classifier with one output, e.g. the reward model "
            "`dpo-plugin compare` trains (outputs/compare/reward_model)."
        )
    with run_folder(ppo_config.output_dir) as output_dir:  # this run's alone
        reward_fn = RewardModelReward.from_pretrained(
            script_args.reward_model_name_or_path, script_args.reward_batch_size
        )
        trainer = build_ppo_trainer(ppo_config, model_args, reward_fn, training_prompts(script_args))
        log_history = trainer.train()
        curves = (("score/mean", "reward-model score"), ("kl/mean", "KL(π‖π_ref) per completion"))
        title = f"PPO on {script_args.dataset_name}, KL coefficient {ppo_config.kl_coef:g}"
        plot_training_curves(log_history, output_dir / "training_curves.png", title, curves=curves)
    print(f"Wrote {output_dir} (policy, value head, ppo_state.json) and {output_dir / 'training_curves.png'}")
    return log_history
