"""SequenceScorer: TRL's tokenization, log-probs equal to a direct full-logit computation, truncation, memoization."""

import pytest
import torch
from datasets import Dataset
from helpers import make_model

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.evaluation.scoring import SequenceScorer, as_text, split_prompt_completion


def direct_logp(model, tokenizer, prompt: str, completion: str) -> float:
    """Σ log π(y_t | ·) from one unpadded forward over prompt + completion and a full log-softmax."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([tokenizer(prompt + completion)["input_ids"]])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
    targets = ids[0, 1:]
    return log_probs[len(prompt_ids) - 1 :].gather(-1, targets[len(prompt_ids) - 1 :, None]).sum().item()


def test_scores_match_a_direct_computation_in_mixed_batches(tiny_model, tokenizer, pairs):
    scorer = SequenceScorer(tiny_model, tokenizer, batch_size=5)
    scores = scorer(pairs["prompt"], pairs["chosen"])
    text_pairs = zip(pairs["prompt"], pairs["chosen"], strict=True)
    expected = [direct_logp(tiny_model, tokenizer, prompt, completion) for prompt, completion in text_pairs]
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=0, atol=1e-4)


def test_truncation_keeps_the_start_as_trls_collator_does(tiny_model, tokenizer):
    prompt, completion = "Q: say it", " good good good good"
    full = SequenceScorer(tiny_model, tokenizer)([prompt], [completion])
    cut = SequenceScorer(tiny_model, tokenizer, max_length=len(prompt) + 5)([prompt], [completion])
    assert cut.item() == pytest.approx(direct_logp(tiny_model, tokenizer, prompt, completion[:5]), abs=1e-4)
    assert cut.item() > full.item()  # fewer (negative) terms


def test_each_distinct_pair_reaches_the_model_once(tiny_model, tokenizer):
    calls = []
    tiny_model.register_forward_hook(lambda module, args, kwargs_or_out: calls.append(1))
    scorer = SequenceScorer(tiny_model, tokenizer, batch_size=8)
    first = scorer(["a", "b", "a"], [" x", " y", " x"])
    again = scorer(["b", "a"], [" y", " x"])
    assert len(calls) == 1 and first[0] == first[2] and again.tolist() == [first[1].item(), first[0].item()]


def test_score_ids_scores_exact_tokens(tiny_model, tokenizer):
    scorer = SequenceScorer(tiny_model, tokenizer)
    prompt_ids, completion_ids = split_prompt_completion(tokenizer, "Q: hi", " ok")
    assert scorer.score_ids([prompt_ids], [completion_ids]).item() == pytest.approx(scorer(["Q: hi"], [" ok"]).item())


def test_rendered_pairs_tokenize_as_trl_tokenizes_conversations(tokenizer, tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Review {i}?"}],
            "chosen": [{"role": "assistant", "content": "great" * (i + 1)}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
        for i in range(3)
    ]
    conversational = Dataset.from_list(rows)
    args = PreferenceConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=128)
    trainer = PreferenceTrainer(
        model=make_model(len(tokenizer)), args=args, train_dataset=conversational, processing_class=tokenizer
    )
    trl_rows = trainer.train_dataset
    for text, trl_row in zip(as_text(conversational, tokenizer), trl_rows, strict=True):
        for column in ("chosen", "rejected"):
            prompt_ids, completion_ids = split_prompt_completion(tokenizer, text["prompt"], text[column])
            assert (prompt_ids, completion_ids) == (trl_row["prompt_ids"], trl_row[f"{column}_ids"])


def test_string_pairs_get_eos_as_trl_adds_it(tokenizer, pairs):
    text = as_text(pairs.select(range(2)), tokenizer)
    assert all(row["chosen"].endswith("<eos>") and not row["prompt"].endswith("<eos>") for row in text)
    assert as_text(text, tokenizer)["chosen"] == text["chosen"]  # not twice
