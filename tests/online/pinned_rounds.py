"""Two tiny on-policy runs whose per-round metrics are pinned in `pinned_rounds.json`, so that a restructuring of the
round shows it changed nothing: a full-parameter policy against the fixed reference and a LoRA policy against the
previous round's, each with held-out sampling after every round.

Regenerate (only when a change is meant to alter the numbers, and say so in the commit):
    python tests/online/pinned_rounds.py
"""

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PINNED = HERE / "pinned_rounds.json"
RUNS = {"full-fixed": (False, "fixed"), "lora-previous_round": (True, "previous_round")}
UNPINNED = ("time/",)  # wall time differs run to run


def run(name: str, folder: Path) -> list[dict]:
    """The per-round metrics of run `name`, without wall times."""
    from datasets import Dataset
    from helpers import make_model, make_tokenizer
    from peft import LoraConfig
    from test_online import a_count, online_args, prompts  # imported here: test_online imports this module

    from dpo_plugin import OnlinePreferenceTrainer

    lora, reference_update = RUNS[name]
    tokenizer = make_tokenizer()
    args = online_args(folder, rounds=2, learning_rate=0.05 if lora else 0.02, reference_update=reference_update)
    peft = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
    trainer = OnlinePreferenceTrainer(
        model=make_model(len(tokenizer)),
        reward_funcs=a_count,
        args=args,
        train_dataset=prompts(16),
        eval_dataset=Dataset.from_list([{"prompt": f"Held out {i}:"} for i in range(4)]),
        processing_class=tokenizer,
        peft_config=peft,
    )
    rounds = trainer.train()
    return [{key: value for key, value in entry.items() if not key.startswith(UNPINNED)} for entry in rounds]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # the tests' helpers
    with tempfile.TemporaryDirectory() as folder:
        pinned = {name: run(name, Path(folder) / name) for name in RUNS}
    PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    print(f"Wrote {PINNED}")
