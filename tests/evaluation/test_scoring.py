"""SequenceScorer: TRL's tokenization, log-probs equal to a direct full-logit computation (also through packed rows
and the chunked head), truncation, memoization, the same held-out accuracies."""

import pytest
import torch
from datasets import Dataset
from helpers import make_model

from dpo_plugin import PreferenceConfig, PreferenceTrainer
from dpo_plugin.evaluation.heldout import preference_accuracies
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
    rows = []
    tiny_model.register_forward_pre_hook(lambda _, __, kwargs: rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    scorer = SequenceScorer(tiny_model, tokenizer, batch_size=8)
    first = scorer(["a", "b", "a"], [" x", " y", " x"])
    checked = rows.pop(0)  # choosing the reader: one row through the model's own head
    again = scorer(["b", "a"], [" y", " x"])
    assert checked == 1 and rows == [2]  # one call: a row per distinct prompt
    assert first[0] == first[2] and again.tolist() == [first[1].item(), first[0].item()]


def per_row_scores(scorer: SequenceScorer, prompts, completions) -> torch.Tensor:
    """The same log-probs read one sequence a row through full logits (`score_ids`), as ranking read them before."""
    ids = [split_prompt_completion(scorer.tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    return scorer.score_ids([p for p, _ in ids], [c for _, c in ids])


@pytest.mark.parametrize("max_length", [None, 24])
def test_text_pairs_read_two_to_a_row_through_the_chunked_head_equal_one_row_each(tokenizer, max_length):
    """Completions of one prompt share a packed row (three of one prompt: the third beside itself), the head is
    chunked: the same log-probs as full logits one sequence a row, truncated alike."""
    model = make_model(len(tokenizer), seed=2)
    prompts = ["Q: the film was", "Q: the film was", "Q: the film was", "Q: plot?", "Q: plot?", "Q: cast?"]
    completions = [" great fun<eos>", " dull<eos>", " a long, slow mess<eos>", " thin<eos>", " tight<eos>", " ok"]
    rows = []
    model.register_forward_pre_hook(lambda _, __, kwargs: rows.append(kwargs["input_ids"].shape), with_kwargs=True)
    scorer = SequenceScorer(model, tokenizer, max_length=max_length, batch_size=2)
    packed = scorer(prompts, completions)
    assert [shape[0] for shape in rows] == [1, 2, 2]  # the head check, then 4 packed rows (3 prompts) 2 a call
    assert rows[1][1] >= rows[2][1]  # the longest rows first
    torch.testing.assert_close(packed, per_row_scores(scorer, prompts, completions), rtol=0, atol=1e-5)


def test_held_out_accuracies_are_those_of_one_row_per_sequence(tokenizer, pairs):
    """Every ranking `preference_accuracies` reports is the same through packed rows and the chunked head as
    through one row per sequence and full logits."""
    models = [make_model(len(tokenizer), seed=seed) for seed in (3, 4)]
    packed = [SequenceScorer(model, tokenizer, batch_size=4) for model in models]
    plain = [SequenceScorer(model, tokenizer, batch_size=4) for model in models]
    per_row = [lambda p, c, scorer=scorer: per_row_scores(scorer, p, c) for scorer in plain]
    text_pairs = as_text(pairs, tokenizer)
    assert preference_accuracies(*packed, text_pairs, batch_size=4) == preference_accuracies(
        *per_row, text_pairs, batch_size=4
    )


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
