"""`sentiment-generation`: the DPO paper's controlled sentiment generation, at the scale of SmolLM2-135M.

Prompts are the first 2–8 words of real Pang & Lee review sentences, as plain text for the model to continue (no chat
template); completions are pure samples from the reference model; the gold sentiment reward (a classifier trained on
the human labels) ranks each prompt's samples into preference pairs. The pairs are machine-made from human labels,
not human pairwise judgments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from ...data.assets import cache_dir, resolve_model
from ...data.builtin import BUILTIN_SPLITS
from ...evaluation.policies import CompletionSampler
from ...utils.atomic import staged_folder
from ...utils.devices import default_device
from ...utils.errors import ConfigError
from ...utils.validation import Rule, check, integer_at_least, required
from .gold import GoldSentimentReward
from .pairs import sentence_splits

logger = logging.getLogger("dpo_plugin")

PREFIX_WORDS = (2, 8)  # fewest and most words of a prompt; each sentence draws its count uniformly
SENTIMENT_GENERATION_FOLDER = "sentiment-generation"
SENTIMENT_GENERATION_FORMAT = 1  # part of the cache key: bump it when a change here changes the generated data

SETTINGS_RULES = {
    "train_prompts": integer_at_least(1),
    "test_prompts": integer_at_least(1),
    "samples_per_prompt": integer_at_least(2),
    "max_new_tokens": integer_at_least(1),
    "batch_size": integer_at_least(1),
    "seed": Rule(lambda value: isinstance(value, int) and not isinstance(value, bool), "be an integer"),
}


@dataclass(frozen=True)
class SentimentGenerationSettings:
    """What `build_sentiment_generation` generates. Every field is part of the cache key.

    The defaults fit a CPU (about 1,000 train pairs); a GPU-sized setting is ``train_prompts=2998,
    samples_per_prompt=4, test_prompts=1000`` (about 6,000 train pairs: every usable sentence).
    """

    model: str = "smollm2-135m-instruct"
    train_prompts: int = 1000
    test_prompts: int = 300
    samples_per_prompt: int = 2
    max_new_tokens: int = 24
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        required(self, "model", hint="a causal LM checkpoint: a folder, hub id or bundled name")
        check(self, SETTINGS_RULES)

    def prompt_count(self, split: str) -> int:
        """``train_prompts`` or ``test_prompts``."""
        return {"train": self.train_prompts, "test": self.test_prompts}[split]

    def cache_key(self) -> str:
        """A short hash of the settings (and of the data format version), naming the cached folder."""
        payload = json.dumps({"format": SENTIMENT_GENERATION_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def prompt_prefixes(settings: SentimentGenerationSettings) -> dict[str, list[str]]:
    """The prompts of each split: the first k words (2 ≤ k ≤ 8) of distinct Pang & Lee sentences of that split.

    Sentences of both labels come from `pairs.sentence_splits()`, the split of `sentiment-pairs`, so train and test
    prompts never share a sentence. Sentences of fewer than 2 words are skipped, leaving 2,998 train and 1,000 test
    sentences. Per split (train first), a `random.Random(settings.seed)` shuffles the sentences and draws k uniformly
    for each, capped at the sentence's length; the first ``train_prompts`` / ``test_prompts`` are kept, so a smaller
    setting's prompts begin the larger one's. A prompt is the sentence's text through its k-th (whitespace-separated)
    word, exactly as written, without a trailing space.
    """
    rng = random.Random(settings.seed)
    prompts = {}
    for split, by_label in sentence_splits().items():
        sentences = [text for texts in by_label.values() for text in texts if len(text.split()) >= PREFIX_WORDS[0]]
        wanted = settings.prompt_count(split)
        if wanted > len(sentences):
            raise ConfigError(
                f"{split}_prompts must be at most {len(sentences)} (the {split} sentences of at least "
                f"{PREFIX_WORDS[0]} words), got {wanted}."
            )
        rng.shuffle(sentences)
        prefixes = [_first_words(text, rng.randint(*PREFIX_WORDS)) for text in sentences]
        prompts[split] = prefixes[:wanted]
    return prompts


def gold_ranked_pairs(completions: Sequence[str], golds: Sequence[float]) -> list[tuple[int, int]]:
    """(chosen, rejected) indices into one prompt's samples, ranked by gold reward: argmax ordering, not Bradley–Terry.

    The samples are sorted by gold reward, best first (a stable sort), and the i-th best is chosen over the i-th
    worst for i < len // 2 (an odd middle sample is unused). The higher gold reward always wins: the label is not
    drawn with probability σ(r_chosen − r_rejected) as a Bradley–Terry annotator would. A pair whose two gold rewards
    or texts are equal is dropped, since neither side is preferred.
    """
    if len(completions) != len(golds):
        raise ValueError(f"Got {len(completions)} completions but {len(golds)} gold rewards.")
    order = sorted(range(len(golds)), key=lambda index: golds[index], reverse=True)
    pairs = [(order[rank], order[-1 - rank]) for rank in range(len(order) // 2)]
    return [(c, r) for c, r in pairs if golds[c] != golds[r] and completions[c] != completions[r]]


def build_sentiment_generation(
    folder: str | Path,
    settings: SentimentGenerationSettings | None = None,
    model=None,
    tokenizer=None,
) -> Path:
    """Generate the pairs of both splits into ``folder`` as ``train.jsonl``, ``test.jsonl`` and ``meta.json``.

    Each prompt of `prompt_prefixes` gets ``samples_per_prompt`` completions sampled purely (temperature 1, no top-k
    or top-p) for at most ``max_new_tokens`` tokens, through the first EOS, which they keep. Their gold reward is
    P(positive | prompt + completion) (`GoldSentimentReward("positive", with_prompt=True)`), and `gold_ranked_pairs`
    makes the rows: ``id`` (``"sg-train-00042"``), ``prompt``, ``chosen``, ``rejected``, ``chosen_gold``,
    ``rejected_gold``. ``model`` and ``tokenizer`` (both or neither) replace loading ``settings.model``, which then
    runs on CUDA when available. The files appear together or not at all: they are staged and then published.
    """
    settings = settings if settings is not None else SentimentGenerationSettings()
    if (model is None) != (tokenizer is None):
        raise ValueError("Pass model and tokenizer together, or neither to load settings.model.")
    started = time.perf_counter()
    prompts = prompt_prefixes(settings)
    if model is None:
        model, tokenizer = _load_model(settings.model)
    sampler = CompletionSampler(model, tokenizer, {"max_new_tokens": settings.max_new_tokens})
    reward = GoldSentimentReward("positive", tokenizer, with_prompt=True)

    batches = sum(
        math.ceil(len(texts) * settings.samples_per_prompt / settings.batch_size) for texts in prompts.values()
    )
    with torch.random.fork_rng(), tqdm(total=batches, desc="Sampling sentiment-generation", unit="batch") as progress:
        torch.manual_seed(settings.seed)
        samples = {split: _sample(sampler, prompts[split], settings, progress) for split in BUILTIN_SPLITS}
    rows = {split: _preference_rows(split, prompts[split], samples[split], reward) for split in BUILTIN_SPLITS}
    meta = {
        "settings": asdict(settings),
        "model": getattr(model.config, "_name_or_path", "") or "a model built in memory",
        "device": str(model.device),
        "gold_reward": {"target": "positive", "scores": "prompt + completion", **reward.classifier.summary()},
        "splits": {split: _split_summary(prompts[split], rows[split]) for split in BUILTIN_SPLITS},
        "build_seconds": round(time.perf_counter() - started, 1),
    }

    folder = Path(folder)
    with staged_folder(folder) as staging:
        for split, split_rows in rows.items():
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows)
            (staging / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def sentiment_generation(settings: SentimentGenerationSettings | None = None) -> Path:
    """The folder of the dataset for ``settings`` (default settings if None), built on first use and then cached.

    It lives at ``cache_dir() / "sentiment-generation" / settings.cache_key()`` and loads with
    ``load_preference_dataset(folder, split)``.
    """
    settings = settings if settings is not None else SentimentGenerationSettings()
    folder = cache_dir() / SENTIMENT_GENERATION_FOLDER / settings.cache_key()
    if not folder.is_dir():
        completions = (settings.train_prompts + settings.test_prompts) * settings.samples_per_prompt
        logger.info(
            "Building sentiment-generation once into %s with %s: %d completions to sample (about 0.1 s each on a "
            "2-core CPU)",
            folder,
            settings,
            completions,
        )
        started = time.perf_counter()
        build_sentiment_generation(folder, settings)
        logger.info("Built sentiment-generation in %.0f s", time.perf_counter() - started)
    return folder


def sentiment_generation_split(split: str, settings: SentimentGenerationSettings | None = None) -> Dataset:
    """One split (``"train"`` or ``"test"``) of `sentiment_generation` as a `Dataset`."""
    path = sentiment_generation(settings) / f"{split}.jsonl"
    return Dataset.from_list([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])


def _first_words(text: str, count: int) -> str:
    """``text`` through the end of its ``count``-th whitespace-separated word (all of it if it has fewer)."""
    return re.match(rf"\s*\S+(?:\s+\S+){{0,{count - 1}}}", text).group()


def _load_model(name: str):
    """The causal LM ``name`` (bundled name, folder or hub id) in eval mode, on CUDA if available, and its tokenizer."""
    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path).to(default_device()).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _sample(sampler: CompletionSampler, prompts: list[str], settings: SentimentGenerationSettings, progress) -> list:
    """``samples_per_prompt`` completions of each prompt, as one list per prompt, ``batch_size`` texts per call."""
    queue = [prompt for prompt in prompts for _ in range(settings.samples_per_prompt)]
    texts: list[str] = []
    for start in range(0, len(queue), settings.batch_size):
        texts += sampler(queue[start : start + settings.batch_size])
        progress.update(1)
    per_prompt = settings.samples_per_prompt
    return [texts[start : start + per_prompt] for start in range(0, len(texts), per_prompt)]


def _preference_rows(split: str, prompts: list[str], samples: list[list[str]], reward: GoldSentimentReward) -> list:
    rows = []
    for prompt, completions in zip(prompts, samples, strict=True):
        golds = reward([prompt] * len(completions), completions)
        for chosen, rejected in gold_ranked_pairs(completions, golds):
            rows.append(
                {
                    "id": f"sg-{split}-{len(rows):05d}",
                    "prompt": prompt,
                    "chosen": completions[chosen],
                    "rejected": completions[rejected],
                    "chosen_gold": golds[chosen],
                    "rejected_gold": golds[rejected],
                }
            )
    return rows


def _split_summary(prompts: list[str], rows: list[dict]) -> dict:
    def mean(column):
        return sum(row[column] for row in rows) / len(rows) if rows else None

    return {
        "prompts": len(prompts),
        "pairs": len(rows),
        "mean_chosen_gold": mean("chosen_gold"),
        "mean_rejected_gold": mean("rejected_gold"),
    }
