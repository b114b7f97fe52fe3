"""`dpo-plugin compare`: its config checks, the claim rules, the report's aggregation and line counts (fast), and the
whole command on a tiny model with the real data (slow)."""

import json
import math
from pathlib import Path

import pytest
from helpers import make_model, make_tokenizer, save_checkpoint
from trl import TrlParser

from dpo_plugin.cli import main
from dpo_plugin.evaluation.heldout import Accuracy, SampleReport
from dpo_plugin.experiments.comparison.claims import online_versus_offline, seed_mean, tdpo_versus_dpo
from dpo_plugin.experiments.comparison.command import code_lines
from dpo_plugin.experiments.comparison.report import summarize
from dpo_plugin.experiments.comparison.runs import CompareConfig, RunResult, probe_interval
from dpo_plugin.rlhf.recipe import parse_ppo_recipe
from dpo_plugin.rlhf.reward_model import RewardModelConfig
from dpo_plugin.tasks.sentiment import generation
from dpo_plugin.training.recipe import parse_recipe

RECIPES = Path(__file__).parents[2] / "recipes"


def run(method: str, seed: int, kl: float, gold: float, accuracy: float = 0.6) -> RunResult:
    samples = SampleReport(completions=4, rewards={"reward_model": 0.1 * seed, "gold_sentiment": gold}, kl=kl)
    return RunResult(method, seed, 0.1, 10, 5.0 + seed, Accuracy(accuracy, accuracy - 0.1, accuracy + 0.1), samples)


def probed(method: str, seed: int, points: list[tuple[float, float]], se: float = 0.01) -> RunResult:
    result = run(method, seed, *points[-1])
    result.probes = [
        {"step": i, "kl": kl, "gold_sentiment": g, "gold_sentiment_se": se} for i, (kl, g) in enumerate(points)
    ]
    return result


def test_seed_mean_adds_the_spread_between_seeds_to_each_runs_own_error():
    assert seed_mean([0.5], [0.02]) == (0.5, 0.02)
    value, error = seed_mean([0.4, 0.6], [0.03, 0.03])
    assert value == pytest.approx(0.5) and error == pytest.approx(math.sqrt(0.02 / 2 + 0.0009 / 2))


def test_online_against_offline_reads_the_offline_frontier_at_the_online_kl():
    offline = [probed("dpo", seed, [(0.0, 0.5), (2.0, 0.6), (4.0, 0.62)]) for seed in (42, 1)]
    above = [probed("online-dpo/gold", seed, [(0.0, 0.5), (3.0, 0.71)]) for seed in (42, 1)]
    level = [probed("online-dpo/reward_model", seed, [(0.0, 0.5), (1.0, 0.55)]) for seed in (42, 1)]
    far = [probed("online-tdpo2/gold", seed, [(0.0, 0.5), (9.0, 0.8)]) for seed in (42, 1)]
    claim = online_versus_offline(offline + above + level + far)
    arms = claim["arms"]
    assert arms["online-dpo/gold"]["offline_gold"] == pytest.approx(0.61)  # half-way between KL 2 and 4
    assert arms["online-dpo/gold"]["verdict"] == "above offline DPO at equal KL"
    assert arms["online-dpo/reward_model"]["verdict"] == "not separated from offline DPO at equal KL"
    assert arms["online-tdpo2/gold"]["verdict"].startswith("beyond offline DPO's reach")
    assert not claim["consistent"]  # one online DPO arm is not above
    assert online_versus_offline(above)["claim"].startswith("skipped")


def test_tdpo_versus_dpo_needs_comparable_reward_and_lower_kl():
    results = [run("dpo", 1, kl=4.0, gold=0.70), run("dpo", 2, kl=6.0, gold=0.74), run("tdpo2", 1, kl=3.0, gold=0.71)]
    claim = tdpo_versus_dpo(results)
    assert claim["stats"]["dpo"] == {"kl": 5.0, "gold": pytest.approx(0.72), "seeds": 2}
    assert claim["comparable_reward"] and claim["consistent"]
    claim = tdpo_versus_dpo([run("dpo", 1, kl=4.0, gold=0.70), run("tdpo2", 1, kl=3.0, gold=0.60)])
    assert not claim["comparable_reward"] and not claim["consistent"]  # lower KL, but for less reward
    assert "skipped" in tdpo_versus_dpo([run("dpo", 1, kl=4.0, gold=0.7)])["claim"]


def test_summary_rows_average_over_seeds_and_give_the_spread():
    rows = summarize([run("dpo", 1, 4.0, 0.70, 0.60).to_dict(), run("dpo", 2, 6.0, 0.76, 0.70).to_dict()])
    (row,) = rows
    assert row["seeds"] == 2 and row["kl"] == 5.0 and row["kl_spread"] == 2.0
    assert row["gold"] == pytest.approx(0.73) and row["accuracy_spread"] == pytest.approx(0.1)
    assert row["seconds"] == 6.5 and row["accuracy_interval"] is None


def test_code_lines_count_statements_without_docstrings_comments_or_blank_lines():
    def documented(x):
        """A docstring that is not code."""
        # a comment

        y = x + 1
        return y

    assert code_lines(documented) == 3  # def, assignment, return


def test_probe_interval_spreads_the_probes_over_the_run():
    assert probe_interval(100, 4) == 25 and probe_interval(10, 4) == 3 and probe_interval(2, 4) == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"objectives": ["dpo", "kto"]}, "objectives"),
        ({"seeds": []}, "seeds"),
        ({"beta_sweep": [0.0]}, "beta_sweep must be a list; each value must be > 0"),
        ({"eval_pairs": 0}, "eval_pairs"),
        ({"ppo_recipe": "missing.yaml"}, "ppo_recipe"),
        ({"online": ["dpo/human"]}, "online must be a list; each value must be objective/ranker"),
        ({"online": ["dpo/gold"], "online_recipe": "missing.yaml"}, "online_recipe"),
        ({"ppo": False, "kl_coef_sweep": [0.1]}, "kl_coef_sweep sweeps PPO"),
    ],
)
def test_config_refuses_what_cannot_run(overrides, message):
    recipes = {name: str(RECIPES / "compare" / f"{stem}.yaml") for name, stem in RECIPE_FIELDS.items()}
    with pytest.raises(ValueError, match=message):
        CompareConfig(**{**recipes, **overrides})


RECIPE_FIELDS = {
    "preference_recipe": "preference",
    "reward_model_recipe": "reward_model",
    "ppo_recipe": "ppo",
    "online_recipe": "online",
}


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("compare_*.yaml")), ids=lambda path: path.name)
def test_compare_recipes_and_the_recipes_they_name_parse_with_no_unknown_keys(recipe):
    (config,) = TrlParser((CompareConfig,)).parse_args_and_config(["--config", str(recipe)])
    data_args, training_args, _, _ = parse_recipe(["--config", config.preference_recipe, "--use_cpu", "true"])
    assert data_args.dataset_name == "sentiment-generation" and training_args.plugin_loss_type == "dpo"
    assert not training_args.ipo_normalize  # summed IPO, so one β means the same for DPO and IPO
    _, ppo_config, model_args = parse_ppo_recipe(["--config", config.ppo_recipe])
    assert model_args.use_peft and ppo_config.max_new_tokens == config.max_new_tokens
    TrlParser((RewardModelConfig,)).parse_args_and_config(["--config", config.reward_model_recipe])
    config.data_settings  # noqa: B018 (valid sentiment-generation settings)


def tiny_recipes(folder: Path, checkpoint: str) -> list[str]:
    """The compare recipes with tiny sizes: their keys are the shipped ones, so those are exercised too."""
    folder.mkdir()
    overrides = {
        "preference": {"use_cpu": "true", "bf16": "false", "per_device_train_batch_size": "2", "max_length": "48"},
        "reward_model": {"learning_rate": "3.0e-3", "per_device_train_batch_size": "2", "max_length": "48"},
        "ppo": {"steps": "2", "rollout_batch_size": "4", "mini_batch_size": "2", "max_new_tokens": "6"},
        "online": {"rounds": "2", "prompts_per_round": "2", "samples_per_prompt": "2", "max_new_tokens": "6"}
        | {"bf16": "false", "per_device_train_batch_size": "2", "max_length": "48", "sampling_batch_size": "2"},
    }
    flags = []
    for field_name, stem in RECIPE_FIELDS.items():
        lines = (RECIPES / "compare" / f"{stem}.yaml").read_text().splitlines()
        changed = overrides[stem]
        kept = [line for line in lines if line.split(":")[0] not in changed and not line.startswith("lora_target")]
        kept += [f"{key}: {value}" for key, value in changed.items()]
        kept += ["lora_target_modules: [q_proj, v_proj]"] if stem != "reward_model" else []
        (folder / f"{stem}.yaml").write_text("\n".join(kept) + "\n")
        flags += [f"--{field_name}", str(folder / f"{stem}.yaml")]
    return flags


@pytest.mark.slow
def test_compare_runs_every_method_and_writes_the_report(tmp_path, monkeypatch):
    """The whole command on a tiny random model, with real review prefixes and the real gold classifier."""
    monkeypatch.setattr(generation, "cache_dir", lambda: tmp_path / "cache")
    checkpoint = save_checkpoint(tmp_path / "tiny", make_model(len(make_tokenizer()), hidden_size=32))
    output = tmp_path / "compare"
    sizes = ["--train_prompts", "8", "--test_prompts", "4", "--max_new_tokens", "6", "--eval_pairs", "4"]
    sizes += ["--eval_prompts", "4", "--probe_prompts", "2", "--probes", "2", "--batch_size", "4"]
    sizes += ["--beta_sweep", "0.5", "--kl_coef_sweep", "0.3", "--claim_pairs", "8", "--claim_epochs", "1"]
    sizes += ["--seeds", "42"]
    main(
        [
            "compare",
            "--config",
            str(RECIPES / "compare_dpo_ppo.yaml"),
            "--model_name_or_path",
            checkpoint,
            "--output_dir",
            str(output),
            *sizes,
            *tiny_recipes(tmp_path / "recipes", checkpoint),
        ]
    )
    report = json.loads((output / "comparison.json").read_text())
    assert [run["method"] for run in report["runs"]] == ["dpo", "ipo", "tdpo2", "ppo"]
    assert [(run["method"], run["strength"]) for run in report["sweep"]] == [("dpo", 0.5), ("ppo", 0.3)]
    for result in report["runs"] + report["sweep"]:
        assert 0.0 <= result["accuracy"]["value"] <= 1.0 and result["samples"]["kl"] is not None
        assert [probe["step"] for probe in result["probes"]][0] == 0 and len(result["probes"]) >= 2
        assert set(result["samples"]["rewards"]) == {"reward_model", "gold_sentiment"}
    assert set(report["claims"]) == {"dpo_vs_ipo", "tdpo_vs_dpo"}
    assert [row["method"] for row in report["complexity"]] == ["DPO", "IPO", "TDPO2", "RM + PPO"]
    table = (output / "comparison.md").read_text()
    assert "| RM + PPO | 0.1 | 1 |" in table and "| DPO | 0.5 |" in table
    for plot in ("accuracy_over_training", "frontier", "dpo_vs_ipo"):
        assert (output / f"{plot}.png").read_bytes().startswith(b"\x89PNG")
    assert len(list((output / "runs").glob("*/result.json"))) == 6
    assert not [path for path in output.rglob(".*")]  # no staging folders or temporary files left


@pytest.mark.slow
def test_compare_online_arms_against_offline_dpo_and_a_rerun_reuses_every_finished_run(tmp_path, monkeypatch):
    """recipes/compare_online.yaml on a tiny random model: offline DPO and online arms ranked by the gold labeller and
    by the reward model, probed after every round; the same command again trains nothing, and one with other
    evaluation settings is refused before it replaces a run."""
    monkeypatch.setattr(generation, "cache_dir", lambda: tmp_path / "cache")
    checkpoint = save_checkpoint(tmp_path / "tiny", make_model(len(make_tokenizer()), hidden_size=32))
    output = tmp_path / "compare"
    argv = ["compare", "--config", str(RECIPES / "compare_online.yaml"), "--model_name_or_path", checkpoint]
    argv += ["--output_dir", str(output), "--train_prompts", "8", "--test_prompts", "4", "--max_new_tokens", "6"]
    argv += ["--eval_pairs", "4", "--eval_prompts", "4", "--probe_pairs", "4", "--probe_prompts", "4"]
    argv += ["--batch_size", "4", "--seeds", "42", "1", "--online", "dpo/gold", "tdpo2/reward_model"]
    argv += tiny_recipes(tmp_path / "recipes", checkpoint)
    main(argv)
    report = json.loads((output / "comparison.json").read_text())
    methods = ["dpo", "online-dpo/gold", "online-tdpo2/reward_model"]
    assert [run["method"] for run in report["runs"]] == methods * 2
    for run in report["runs"][1:3]:
        assert [probe["step"] for probe in run["probes"]] == [0, 1, 2]  # the start, then after each round
        assert run["probes"][0] == report["runs"][0]["probes"][0]  # every run starts at the reference's point
        assert run["samples"]["kl"] == run["probes"][-1]["kl"]  # the final samples are the last round's probe
        assert run["steps"] > 0 and run["curves"]["pairs"]
    claim = report["claims"]["online_vs_offline"]
    assert set(claim["arms"]) == set(methods[1:]) and all("verdict" in row for row in claim["arms"].values())
    table = (output / "comparison.md").read_text()
    assert "| online DPO (gold labeller) | 0.1 | 2 |" in table and "online TDPO2 (reward model)" in table
    assert (output / "frontier_over_training.png").read_bytes().startswith(b"\x89PNG")

    results = {path: path.read_text() for path in (output / "runs").glob("*/result.json")}
    assert len(results) == 6
    main(argv)  # everything finished: reused, not retrained
    assert {path: path.read_text() for path in results} == results
    assert json.loads((output / "comparison.json").read_text())["runs"] == report["runs"]

    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--eval_prompts", "3"])
    assert stopped.value.code == 2
    assert {path: path.read_text() for path in results} == results
