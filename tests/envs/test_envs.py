"""The `envs` gymnasium environments: API conformance, the walk over the data, vector/single equivalence, errors."""

import copy
import math
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from dpo_plugin_envs import CompletionEnv, PreferencePairsEnv, UnicodeText, register_envs
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space
from helpers import make_tokenizer

PAIRS = "dpo_plugin/PreferencePairs-v0"
COMPLETION = "dpo_plugin/Completion-v0"

ROWS = [
    ("What is the capital of France?", "The capital of France is Paris.", "France is a country in Europe."),
    ("Translate 'thank you' to Japanese.", "ありがとう (arigatō).", "Thank you."),
    ("Name a prime number above 10.", "11 is prime.", "12 is prime."),
    ("Is a tomato a fruit?", "Botanically, yes: it is a berry.", "No, never."),
    (
        "Write a haiku about rain.",
        "Soft rain on the roof\nthe garden drinks in silence\nclouds pass, the sun stays",
        "Rain.",
    ),
    ("How do I reverse a list in Python?", "Use my_list.reverse() or my_list[::-1].", "You cannot."),
    ("What does café mean?", "Café is French for coffee, or a coffee shop.", "It is a kind of tea."),
    ("Give me a friendly greeting.", "Hello! 👋 How can I help you today?", "What do you want?"),
    ("What is 7 × 8?", "7 × 8 = 56.", "7 × 8 = 54."),
    ("Summarise: the cat sat on the mat.", "A cat sat on a mat.", "Dogs are loyal."),
]
PAIR_ROWS = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in ROWS]
PROMPT_ROWS = [{"prompt": p} for p, _, _ in ROWS]
CHOSEN = {row["prompt"]: row["chosen"] for row in PAIR_ROWS}
REJECTED = {row["prompt"]: row["rejected"] for row in PAIR_ROWS}


def words(prompts, completions):
    """A deterministic reward: the number of words in the completion."""
    return [float(len(completion.split())) for completion in completions]


def polite(prompts, completions):
    return [1.0 if "please" in completion.lower() else 0.0 for completion in completions]


def longer(observation) -> int:
    """A deterministic policy: the longer candidate."""
    first, second = observation["completions"]
    return int(len(second) > len(first))


def oracle(answers):
    return lambda observation: observation["completions"].index(answers[observation["prompt"]])


def unbatched(observations, n):
    """Batched PreferencePairs observations as per-sub-env dicts."""
    prompts, (firsts, seconds) = observations["prompt"], observations["completions"]
    return [{"prompt": prompts[i], "completions": (firsts[i], seconds[i])} for i in range(n)]


def run_single(env, episodes, policy, seed):
    """(observation, reset info id, reward) of each episode of `env`, stepped alone."""
    results = []
    observation, info = env.reset(seed=seed)
    for k in range(episodes):
        if k:
            observation, info = env.reset()
        reward = env.step(policy(observation))[1]
        results.append((observation, info["pair_id"], reward))
    return results


# ---------------------------------------------------------------- registration and API conformance


ENV_KWARGS = [
    (PAIRS, {"dataset": PAIR_ROWS}),
    (PAIRS, {"dataset": Dataset.from_list(PAIR_ROWS), "order": "random"}),
    (COMPLETION, {"dataset": PROMPT_ROWS, "reward_fn": words}),
    (COMPLETION, {"dataset": Dataset.from_list(PROMPT_ROWS), "reward_fn": {"words": words, "polite": polite}}),
]


@pytest.mark.parametrize(("env_id", "kwargs"), ENV_KWARGS)
def test_check_env_passes_without_warnings(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gymnasium.make(env_id, **kwargs)
        check_env(env.unwrapped)
        env.reset(seed=0)  # through gymnasium's own wrappers (PassiveEnvChecker, OrderEnforcing) too
        env.step(env.action_space.sample())
        register_envs()  # idempotent, no "Overriding environment" warning


def test_make_works_in_a_fresh_interpreter_without_importing_envs():
    code = (
        "import sys, gymnasium\n"
        f"env = gymnasium.make({PAIRS!r}, dataset={PAIR_ROWS[:2]!r})\n"
        "observation, info = env.reset(seed=0)\n"
        "assert info['pair_id'] == '0', info\n"
        "assert not {'torch', 'transformers', 'dpo_plugin'} & set(sys.modules), 'envs must stay a leaf'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_unicode_text_space():
    space = UnicodeText(12, seed=0)
    assert space.contains("ありがとう 👋\n") and space.contains("") and not space.contains("x" * 13)
    assert not space.contains(3) and not space.contains(None)
    assert UnicodeText(12, min_length=2).contains("a") is False
    assert all(space.contains(space.sample()) for _ in range(20))
    assert copy.deepcopy(space) == space != gymnasium.spaces.Text(12, min_length=0)
    assert space != UnicodeText(13) and repr(space) == "UnicodeText(max_length=12, min_length=0)"
    batched = batch_space(space, 3)
    assert batched.contains(("é", "", "日本")) and not batched.contains(("é", ""))


# ---------------------------------------------------------------- PreferencePairs: scores and the walk


def test_oracles_score_one_and_zero_and_random_scores_half():
    env = gymnasium.make(PAIRS, dataset=PAIR_ROWS)
    n = len(PAIR_ROWS)
    assert sum(r for *_, r in run_single(env, n, oracle(CHOSEN), seed=0)) == n
    assert sum(r for *_, r in run_single(env, n, oracle(REJECTED), seed=0)) == 0

    rng, episodes = np.random.default_rng(1), 2000
    mean = np.mean([r for *_, r in run_single(env, episodes, lambda _: int(rng.integers(2)), seed=2)])
    assert abs(mean - 0.5) < 4.5 * math.sqrt(0.25 / episodes)


def test_observation_hides_the_answer_and_step_reveals_it():
    env = gymnasium.make(PAIRS, dataset=PAIR_ROWS)
    observation, info = env.reset(seed=0)
    assert info == {"pair_id": "0", "pair_index": 0}
    assert observation["prompt"] == ROWS[0][0] and set(observation["completions"]) == set(ROWS[0][1:])
    correct = observation["completions"].index(ROWS[0][1])
    final, reward, terminated, truncated, info = env.step(1 - correct)
    assert (final, reward, terminated, truncated) == (observation, 0.0, True, False)
    assert info == {"pair_id": "0", "pair_index": 0, "correct_action": correct}


def test_sequential_walk_serves_each_pair_once_in_order_then_wraps():
    env = gymnasium.make(PAIRS, dataset=PAIR_ROWS)
    ids = [pair_id for _, pair_id, _ in run_single(env, 2 * len(PAIR_ROWS), longer, seed=0)]
    assert ids == [str(i) for i in range(len(PAIR_ROWS))] * 2

    observation, info = env.reset(options={"index": 7})
    assert info["pair_index"] == 7 and observation["prompt"] == ROWS[7][0]
    env.step(0)
    assert env.reset()[1]["pair_index"] == 8
    assert env.reset(seed=1)[1]["pair_index"] == 0  # a seed restarts the walk


def test_random_order_is_reproducible_per_seed():
    env = gymnasium.make(PAIRS, dataset=PAIR_ROWS, order="random")
    first, again, other = (run_single(env, 30, longer, seed=seed) for seed in (5, 5, 6))
    assert first == again and first != other
    assert len({pair_id for _, pair_id, _ in first}) > 1


def test_ids_come_from_an_id_column_of_a_datasets_dataset():
    dataset = Dataset.from_list([{**row, "id": 100 + i, "source": "test"} for i, row in enumerate(PAIR_ROWS)])
    env = gymnasium.make(PAIRS, dataset=dataset)
    assert [pair_id for _, pair_id, _ in run_single(env, 3, longer, seed=0)] == ["100", "101", "102"]


def test_render_ansi_shows_the_pair_then_the_pick_and_the_answer():
    env = gymnasium.make(PAIRS, dataset=PAIR_ROWS, render_mode="ansi")
    observation, _ = env.reset(seed=0)
    before = env.render()
    assert ROWS[0][0] in before and ROWS[0][1] in before and "Picked" not in before
    env.step(observation["completions"].index(ROWS[0][1]))
    assert "Picked" in env.render() and "reward 1.0" in env.render()


# ---------------------------------------------------------------- vector environments


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_native_vector_env_equals_one_single_env_with_the_same_seed(order):
    n, steps = 4, 7
    vector = gymnasium.make_vec(
        PAIRS, num_envs=n, vectorization_mode="vector_entry_point", dataset=PAIR_ROWS, order=order
    )
    assert vector.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    observations, infos = vector.reset(seed=3)
    results = []
    for _ in range(steps):
        assert observations in vector.observation_space
        current = unbatched(observations, n)
        ids = list(infos["pair_id"])
        observations, rewards, terminations, truncations, infos = vector.step(np.array([longer(o) for o in current]))
        assert terminations.all() and not truncations.any() and rewards.dtype == np.float64
        assert list(infos["final_obs"]) == current and list(infos["final_info"]["pair_id"]) == ids
        results += zip(current, ids, rewards.tolist(), strict=True)

    single = gymnasium.make(PAIRS, dataset=PAIR_ROWS, order=order)
    assert results == run_single(single, n * steps, longer, seed=3)


def test_native_vector_env_walks_the_dataset_once_in_order_then_wraps():
    vector = gymnasium.make_vec(PAIRS, num_envs=4, vectorization_mode="vector_entry_point", dataset=PAIR_ROWS)
    _, infos = vector.reset(seed=0)
    served = list(infos["pair_index"])
    for _ in range(2):
        served += list(vector.step(np.zeros(4, dtype=int))[4]["pair_index"])
    assert served == [*range(10), 0, 1]
    assert list(vector.reset(options={"index": 8})[1]["pair_index"]) == [8, 9, 0, 1]


def test_native_vector_env_batches_like_sync_vector_env():
    kwargs = {"dataset": PAIR_ROWS, "num_envs": 3}
    native = gymnasium.make_vec(PAIRS, vectorization_mode="vector_entry_point", **kwargs)
    sync = gymnasium.make_vec(
        PAIRS, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **kwargs
    )
    assert native.observation_space == sync.observation_space and native.action_space == sync.action_space
    assert native.single_observation_space == sync.single_observation_space
    assert native.reset(seed=0)[1].keys() == sync.reset(seed=0)[1].keys()
    native_step, sync_step = native.step(np.zeros(3, dtype=int)), sync.step(np.zeros(3, dtype=int))
    assert native_step[4].keys() == sync_step[4].keys()
    assert native_step[4]["final_info"].keys() == sync_step[4]["final_info"].keys()
    assert native_step[0] in native.observation_space and sync_step[0] in native.observation_space


def test_sync_vector_env_of_single_envs_equals_each_sub_env_alone():
    n, steps, seed = 3, 5, 10
    vector = SyncVectorEnv(
        [lambda: gymnasium.make(PAIRS, dataset=PAIR_ROWS, order="random")] * n, autoreset_mode=AutoresetMode.SAME_STEP
    )
    observations, _ = vector.reset(seed=seed)
    per_env = [[] for _ in range(n)]
    for _ in range(steps):
        current = unbatched(observations, n)
        observations, rewards, _, _, infos = vector.step(np.array([longer(o) for o in current]))
        for i in range(n):
            per_env[i].append((current[i], infos["final_info"]["pair_id"][i], rewards[i]))
    for i in range(n):
        alone = gymnasium.make(PAIRS, dataset=PAIR_ROWS, order="random")
        assert per_env[i] == run_single(alone, steps, longer, seed=seed + i)


def test_record_episode_statistics():
    env = gymnasium.wrappers.RecordEpisodeStatistics(gymnasium.make(PAIRS, dataset=PAIR_ROWS))
    observation, _ = env.reset(seed=0)
    *_, info = env.step(oracle(CHOSEN)(observation))
    assert info["episode"]["r"] == 1.0 and info["episode"]["l"] == 1

    vector = gymnasium.wrappers.vector.RecordEpisodeStatistics(
        gymnasium.make_vec(PAIRS, num_envs=4, vectorization_mode="vector_entry_point", dataset=PAIR_ROWS)
    )
    observations, _ = vector.reset(seed=0)
    chosen = oracle(CHOSEN)
    *_, infos = vector.step(np.array([chosen(o) for o in unbatched(observations, 4)]))
    assert infos["episode"]["r"].tolist() == [1.0] * 4 and infos["episode"]["l"].tolist() == [1] * 4


def test_vector_env_errors():
    vector = gymnasium.make_vec(PAIRS, num_envs=2, vectorization_mode="vector_entry_point", dataset=PAIR_ROWS)
    with pytest.raises(gymnasium.error.ResetNeeded, match="reset"):
        vector.step(np.array([0, 1]))
    vector.reset(seed=0)
    for actions in (np.array([0, 2]), [0], np.array([0.0, 1.0]), "ab", None):
        with pytest.raises(gymnasium.error.InvalidAction, match="expected 2 actions"):
            vector.step(actions)
    vector.step([1, 0])  # a list is fine
    with pytest.raises(ValueError, match="num_envs"):
        gymnasium.make_vec(PAIRS, num_envs=0, vectorization_mode="vector_entry_point", dataset=PAIR_ROWS)


# ---------------------------------------------------------------- Completion


def test_completion_rewards_are_weighted_components():
    env = gymnasium.make(
        COMPLETION, dataset=PROMPT_ROWS, reward_fn={"words": words, "polite": polite}, reward_weights={"polite": 2.5}
    )
    observation, info = env.reset(seed=0)
    assert observation == ROWS[0][0] and info == {"prompt_id": "0", "prompt_index": 0}
    final, reward, terminated, truncated, info = env.step("Paris, please.")
    assert (final, reward, terminated, truncated) == (observation, 2.0 + 2.5, True, False)
    assert info == {"prompt_id": "0", "prompt_index": 0, "reward_components": {"words": 2.0, "polite": 1.0}}


def test_a_single_reward_function_is_named_after_itself():
    env = CompletionEnv(PROMPT_ROWS, reward_fn=words)
    env.reset(seed=0)
    assert env.step("two words")[4]["reward_components"] == {"words": 2.0}
    env = CompletionEnv(PROMPT_ROWS, reward_fn=lambda prompts, completions: [0.5] * len(completions))
    env.reset(seed=0)
    assert env.step("")[4]["reward_components"] == {"reward": 0.5}


def test_completion_render_ansi():
    env = CompletionEnv(PROMPT_ROWS, reward_fn=words, render_mode="ansi")
    env.reset(seed=0)
    assert env.render().endswith(ROWS[0][0])
    env.step("It is Paris.")
    assert "It is Paris." in env.render() and "Reward: 3 (words 3)" in env.render()


def test_completion_vector_env_calls_each_reward_function_once_per_step_with_the_whole_batch():
    calls = []

    def recorded(prompts, completions):
        calls.append((list(prompts), list(completions)))
        return words(prompts, completions)

    n = 4
    vector = gymnasium.make_vec(
        COMPLETION, num_envs=n, vectorization_mode="vector_entry_point", dataset=PROMPT_ROWS, reward_fn=recorded
    )
    prompts, _ = vector.reset(seed=0)
    for step in range(3):
        completions = tuple(f"answer {i} to {p[:10]}" for i, p in enumerate(prompts))
        new_prompts, rewards, _, _, infos = vector.step(completions)
        assert calls[step] == (list(prompts), list(completions))
        assert rewards.tolist() == [float(len(c.split())) for c in completions]
        assert infos["final_info"]["reward_components"]["recorded"].tolist() == rewards.tolist()
        assert list(infos["final_obs"]) == list(prompts)
        prompts = new_prompts
    assert len(calls) == 3
    vector.step(np.array(["a", "b", "c", "d"], dtype=object))  # an object array of strings is fine too
    with pytest.raises(gymnasium.error.InvalidAction, match="expected 4 actions"):
        vector.step(("a", "b", 3, "d"))


def test_reward_functions_are_called_in_trls_convention_or_positionally_as_their_signature_asks():
    """Keywords (TRL's form: `completion_ids` from the processing class, the dataset's other columns as lists, only
    what the function takes unless it takes **kwargs), or two positional arguments for any other signature."""
    rows = [{"prompt": p, "answer": c, "id": f"row-{i}"} for i, (p, c, _) in enumerate(ROWS)]
    calls = {}

    def keywords(prompts, completions, answer):
        calls["keywords"] = {"prompts": prompts, "answer": answer}
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def trl_style(completion_ids, **kwargs):
        calls["trl_style"] = {"ids": completion_ids, "keys": sorted(kwargs)}
        return [float(len(ids)) for ids in completion_ids]

    def positional(texts, outputs):
        calls["positional"] = (texts, outputs)
        return [0.0] * len(outputs)

    tokenizer = make_tokenizer()
    env = gymnasium.make_vec(
        COMPLETION,
        num_envs=2,
        vectorization_mode="vector_entry_point",
        dataset=rows,
        reward_fn={"keywords": keywords, "trl_style": trl_style, "positional": positional},
        processing_class=tokenizer,
    )
    env.reset(seed=0)
    _, rewards, _, _, infos = env.step((ROWS[0][1], "no"))
    assert calls["keywords"] == {"prompts": [ROWS[0][0], ROWS[1][0]], "answer": [ROWS[0][1], ROWS[1][1]]}
    assert calls["trl_style"]["keys"] == ["answer", "completions", "id", "prompts"]
    assert calls["trl_style"]["ids"] == [
        tokenizer(text, add_special_tokens=False).input_ids for text in (ROWS[0][1], "no")
    ]
    assert calls["positional"] == ([ROWS[0][0], ROWS[1][0]], [ROWS[0][1], "no"])
    assert infos["final_info"]["reward_components"]["keywords"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="requires \\['completion_ids'\\].*pass processing_class"):
        gymnasium.make(COMPLETION, dataset=rows, reward_fn=lambda prompts, completions, completion_ids: [0.0])


def grouped(num_envs, group_size, **kwargs):
    return gymnasium.make_vec(
        COMPLETION,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        dataset=PROMPT_ROWS,
        reward_fn=words,
        group_size=group_size,
        **kwargs,
    )


def test_a_group_of_sub_envs_serves_one_row_and_the_walk_moves_on_by_groups():
    """group_size 3: each block of 3 consecutive sub-envs answers the same prompt row, every sub-env's reset info
    names it, and each step starts the next rows of the sequential walk, wrapping at the end."""
    vector = grouped(6, 3)
    prompts, infos = vector.reset(seed=0)
    assert list(prompts) == [ROWS[0][0]] * 3 + [ROWS[1][0]] * 3
    assert infos["prompt_id"].tolist() == ["0"] * 3 + ["1"] * 3 and infos["prompt_index"].tolist() == [0] * 3 + [1] * 3
    served = [infos["prompt_index"].tolist()]
    for _ in range(5):
        completions = tuple("word " * (i + 1) for i in range(6))
        prompts, rewards, terminations, _, infos = vector.step(completions)
        assert rewards.tolist() == [float(i + 1) for i in range(6)] and terminations.all()
        assert list(infos["final_obs"])[:3] == [ROWS[served[-1][0]][0]] * 3
        served.append(infos["prompt_index"].tolist())
    assert [rows[::3] for rows in served] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [0, 1]]
    assert all(rows[:3] == [rows[0]] * 3 and rows[3:] == [rows[3]] * 3 for rows in served)


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_grouped_env_serves_the_rows_an_ungrouped_env_of_one_sub_env_per_group_serves(order):
    """The walk advances once per group, drawing as an env with one sub-env per group does: seeded alike, a
    group_size-2 env of 8 sub-envs serves the rows a group_size-1 env of 4 serves, each twice."""
    pairs_of_rows, rows = grouped(8, 2, order=order), grouped(4, 1, order=order)
    _, grouped_infos = pairs_of_rows.reset(seed=3)
    _, plain_infos = rows.reset(seed=3)
    for _ in range(4):
        assert grouped_infos["prompt_index"].tolist() == np.repeat(plain_infos["prompt_index"], 2).tolist()
        _, _, _, _, grouped_infos = pairs_of_rows.step(tuple("a b" for _ in range(8)))
        _, _, _, _, plain_infos = rows.step(tuple("a b" for _ in range(4)))


def test_group_size_errors():
    with pytest.raises(ValueError, match="num_envs=6 is not a multiple of group_size=4"):
        grouped(6, 4)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="group_size must be a positive integer"):
            grouped(4, bad)


@pytest.mark.parametrize(
    ("reward_fn", "message"),
    [
        (lambda p, c: [1.0, 2.0], r"'reward' returned 2 rewards, expected 1 \(one per completion\)"),
        (lambda p, c: [float("nan")], "returned nan at index 0"),
        (lambda p, c: [float("inf")], "returned inf at index 0"),
        (lambda p, c: ["high"], "returned 'high' at index 0"),
        (lambda p, c: [None], "returned None at index 0"),
        (lambda p, c: 1.0, "expected a sequence of 1 floats"),
    ],
)
def test_bad_reward_function_output(reward_fn, message):
    env = CompletionEnv(PROMPT_ROWS, reward_fn=reward_fn)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step("An answer.")


def test_completion_action_and_order_errors():
    env = CompletionEnv(PROMPT_ROWS, reward_fn=words, max_completion_length=20)
    with pytest.raises(gymnasium.error.ResetNeeded, match=r"reset\(\) before step"):
        env.step("Paris.")
    env.reset(seed=0)
    for action in (42, None, ["Paris."], "x" * 21):
        with pytest.raises(gymnasium.error.InvalidAction, match="max_completion_length=20"):
            env.step(action)
    env.step(np.str_("Paris."))
    with pytest.raises(gymnasium.error.ResetNeeded, match="episode has ended"):
        env.step("Paris.")
    with pytest.raises(ValueError, match=r"unknown reward component\(s\) \['wordz'\]"):
        CompletionEnv(PROMPT_ROWS, reward_fn={"words": words}, reward_weights={"wordz": 1.0})
    with pytest.raises(TypeError, match="callable"):
        CompletionEnv(PROMPT_ROWS, reward_fn={"words": "words"})


# ---------------------------------------------------------------- errors common to both environments


def test_pair_action_errors():
    env = PreferencePairsEnv(PAIR_ROWS)
    with pytest.raises(gymnasium.error.ResetNeeded, match=r"reset\(\) before step"):
        env.step(0)
    env.reset(seed=0)
    for action in (2, -1, 0.5, "a", None, np.array([1])):
        with pytest.raises(gymnasium.error.InvalidAction, match=r"is not in the action space Discrete\(2\)"):
            env.step(action)
    env.step(np.array(1))
    with pytest.raises(gymnasium.error.ResetNeeded, match="episode has ended"):
        env.step(np.int64(0))
    env.reset()
    env.step(np.int8(0))


@pytest.mark.parametrize("make", [PreferencePairsEnv, lambda rows, **kw: CompletionEnv(rows, words, **kw)])
def test_dataset_errors(make):
    with pytest.raises(ValueError, match="empty"):
        make([])
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt'.*columns found: \['question'\]"):
        make([{"question": "Why?"}])
    conversational = [{key: [{"role": "user", "content": "Hi"}] for key in ("prompt", "chosen", "rejected")}]
    with pytest.raises(TypeError, match=r"Row 0, column 'prompt': expected a string, found list.*apply_chat_template"):
        make(conversational)
    rows = [dict(row) for row in PAIR_ROWS]
    rows[3]["prompt"] = 3
    with pytest.raises(TypeError, match="Row 3, column 'prompt': expected a string, found int"):
        make(rows)
    with pytest.raises(ValueError, match=r"order='shuffled' is not one of \['sequential', 'random'\]"):
        make(PAIR_ROWS, order="shuffled")
    with pytest.raises(TypeError, match="pass one split"):
        make(DatasetDict({"train": Dataset.from_list(PAIR_ROWS)}))
    env = make(PAIR_ROWS)
    with pytest.raises(ValueError, match=r"options\['index'\] must be a row index in \[0, 10\), got 10"):
        env.reset(options={"index": 10})
    with pytest.raises(ValueError, match="Unknown reset option"):
        env.reset(options={"row": 1})


def test_text_longer_than_the_bound_is_rejected():
    with pytest.raises(ValueError, match="Row 4, column 'chosen' has 77 characters, more than max_text_length=40"):
        PreferencePairsEnv(PAIR_ROWS, max_text_length=40)
    assert PreferencePairsEnv(PAIR_ROWS, max_text_length=500).observation_space["prompt"].max_length == 500
