"""TRL's own `OnlineDPOTrainer` tests, run against `OnlinePreferenceTrainer` / `OnlinePreferenceConfig`, offline.

TRL's test file is not shipped in its wheel or sdist, so it is read from a TRL checkout at run time, never kept here:

    git clone https://github.com/huggingface/trl /tmp/trl   # or any checkout of the installed version
    python tests/online/trl_suite.py /tmp/trl     # pytest's summary with TRL's trainer, then with the plugin's

The file `tests/experimental/test_online_dpo_trainer.py` is rewritten on the way in, the same way for both trainers:
- the import of `OnlineDPOConfig` / `OnlineDPOTrainer` takes the plugin's classes under TRL's names (for the
  plugin's run; TRL's run keeps TRL's);
- on a machine without CUDA every `OnlineDPOConfig(...)` gets `use_cpu=True, bf16=False` (the config's bf16 default
  is refused by transformers there, for TRL's config as for the plugin's);
- the hub's tiny test models (`trl-internal-testing/tiny-*`) become tiny local Llama checkpoints (a causal LM, and a
  one-output sequence classifier as the reward model) with a character tokenizer that has a chat template;
- `load_dataset("trl-internal-testing/zen", config, ...)` becomes `zen(config, ...)` below: the Zen of Python as
  prompts, plain (`standard_prompt_only`) or as user messages (`conversational_prompt_only`), train and test splits;
- TRL's `testing_utils` becomes `TrlTestCase` (a `tmp_dir` per test) and its `require_*` marks, which skip what this
  machine lacks (vLLM, an accelerator, vision models).
The test needing a hub model with remote code (`test_trust_remote_code`) is deselected: it cannot run offline.
`tests/online/test_trl_online_dpo.py` holds the same scenarios as the project's own tests, so CI runs them.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

HERE = Path(__file__).parent
TRL_TESTS = Path("tests/experimental/test_online_dpo_trainer.py")
POLICY_ID = "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"
REWARD_ID = "trl-internal-testing/tiny-LlamaForCausalLM-3.2"
OFFLINE_ONLY = "not test_trust_remote_code"  # a hub model with remote code: not available offline


def zen_lines() -> list[str]:
    """The Zen of Python, one aphorism a line (the text behind TRL's `zen` test datasets)."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
        text = codecs.decode(importlib.import_module("this").s, "rot13")
    return [line for line in text.splitlines()[2:] if line.strip()]


def zen(config: str, split: str | None = None) -> Dataset | DatasetDict:
    """A stand-in for `load_dataset("trl-internal-testing/zen", config, split=split)`: each aphorism's first half a
    prompt, as text or as one user message; the last 2 aphorisms are the test split."""
    if config not in ("standard_prompt_only", "conversational_prompt_only"):
        raise ValueError(f"no stand-in for zen/{config}")
    prompts = [" ".join(line.split()[: max(1, len(line.split()) // 2)]) for line in zen_lines()]
    if config == "conversational_prompt_only":
        rows = [{"prompt": [{"role": "user", "content": f"What comes next? {prompt}"}]} for prompt in prompts]
    else:
        rows = [{"prompt": prompt} for prompt in prompts]
    splits = DatasetDict({"train": Dataset.from_list(rows[:-2]), "test": Dataset.from_list(rows[-2:])})
    return splits if split is None else splits[split]


def save_standins(folder: Path) -> dict[str, str]:
    """Tiny local checkpoints for the hub's test models: hub id → folder."""
    from helpers import make_tokenizer, save_checkpoint, tiny_reward_model

    tokenizer = make_tokenizer()
    policy = save_checkpoint(folder / "policy", tokenizer=tokenizer)
    reward = folder / "reward"
    tiny_reward_model(tokenizer).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    return {POLICY_ID: policy, REWARD_ID: str(reward)}


class TrlTestCase:
    """TRL's test base: a fresh temporary folder per test as `self.tmp_dir`."""

    @pytest.fixture(autouse=True)
    def set_tmp_dir(self, tmp_path):
        self.tmp_dir = str(tmp_path)


def _requires(module: str, reason: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=reason)


require_peft = _requires("peft", "needs peft")
require_vllm = _requires("vllm", "needs vLLM")
require_vision = pytest.mark.skip(reason="needs vision models from the hub")
require_torch_accelerator = pytest.mark.skip(reason="needs an accelerator")  # and hub models; CPU here


CONTENDERS = {
    "trl": "from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer",
    "dpo_plugin": (
        "from dpo_plugin import OnlinePreferenceConfig as OnlineDPOConfig\n"
        "from dpo_plugin import OnlinePreferenceTrainer as OnlineDPOTrainer"
    ),
}


def adapted(source: str, standins: dict[str, str], contender: str, cpu: bool) -> str:
    """TRL's test file with `contender`'s classes, local models, the zen stand-in and local testing utilities."""
    replacements = {
        CONTENDERS["trl"]: CONTENDERS[contender],
        "from ..testing_utils import": "from trl_suite import",
        **({"OnlineDPOConfig(": "OnlineDPOConfig(use_cpu=True, bf16=False, "} if cpu else {}),
        'load_dataset("trl-internal-testing/zen", ': "zen(",
        **{f'"{hub_id}"': repr(folder) for hub_id, folder in standins.items()},
    }
    for old, new in replacements.items():
        if old not in source and old != new:
            raise SystemExit(f"TRL's test file no longer contains {old!r}: update trl_suite.adapted.")
        source = source.replace(old, new)
    return source.replace("from trl_suite import", "from trl_suite import zen,", 1)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / TRL_TESTS).is_file():
        print(f"usage: python tests/online/trl_suite.py TRL_CHECKOUT   (holding {TRL_TESTS})", file=sys.stderr)
        return 2
    import torch

    sys.path.insert(0, str(HERE.parent))  # the tests' helpers
    source = (Path(argv[0]) / TRL_TESTS).read_text()
    paths = [str(HERE), str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    codes = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        standins = save_standins(folder / "models")
        for contender in CONTENDERS:
            test_file = folder / f"test_online_dpo_trainer_with_{contender}.py"
            test_file.write_text(adapted(source, standins, contender, cpu=not torch.cuda.is_available()))
            print(f"\n=== TRL's OnlineDPOTrainer tests with {contender}'s classes ===", flush=True)
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
            command += ["-o", "addopts=", "-rfEs", str(test_file), "-k", OFFLINE_ONLY]
            codes[contender] = subprocess.run(command, cwd=folder, env=environment).returncode
    return codes["dpo_plugin"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
