"""Self-consistency voting and prompt building."""

from __future__ import annotations

import pytest
from consistency_worker.data.problems import Problem
from consistency_worker.data.prompts import build_messages, render_prompt
from consistency_worker.grading.voting import (
    Outcome,
    aggregate,
    failure,
    majority_vote,
    normalise_code,
)


def test_normalise_code_ignores_formatting_and_comments() -> None:
    a = "def f(x):\n    # add one\n    return x+1\n"
    b = "def f(x):\n\n    return (x + 1)  # trailing\n"
    assert normalise_code(a) == normalise_code(b)
    assert normalise_code(a) != normalise_code("def f(x):\n    return x + 2\n")
    assert normalise_code("def (") == "def ("


def test_majority_vote_and_agreement() -> None:
    vote = majority_vote(["5", "5", "7", None, "5"])
    assert (vote.answer, vote.count, vote.total, vote.agreement, vote.consistent) == ("5", 3, 5, 0.6, False)
    assert vote.distribution == {"5": 3, "7": 1}
    assert majority_vote(["3", "3", "3"]).consistent
    assert not majority_vote(["3", "3", None]).consistent
    empty = majority_vote([None, None])
    assert (empty.answer, empty.agreement, empty.consistent) == (None, 0.0, False)
    assert majority_vote([]).answer is None


def test_ties_are_broken_deterministically() -> None:
    assert majority_vote(["7", "5", "5", "7"]).answer == "7"  # first seen
    assert majority_vote(["5", "7", "7", "5"]).answer == "5"
    assert majority_vote(["7", "5", "5", "7"], prefer="5").answer == "5"  # e.g. the greedy answer
    assert majority_vote(["7", "7", "5"], prefer="5").answer == "7"  # prefer only breaks ties


def test_failure_criteria() -> None:
    agreeing = majority_vote(["1"] * 5)
    split = majority_vote(["1", "2", "3", "4", "5"])
    assert not failure(True, agreeing).failed
    assert failure(False, agreeing).reasons == ("greedy answer wrong",)
    low = failure(True, split, min_agreement=0.3)
    assert low.failed and low.reasons[0].startswith("agreement 0.20 < 0.30")
    assert failure(None, split).failed and not failure(None, agreeing).failed


def test_aggregate_per_stratum_and_domain() -> None:
    def outcome(i: int, domain: str, stratum: str, answers: list[str | None], greedy: bool) -> Outcome:
        vote = majority_vote(answers)
        return Outcome(problem_id=str(i), domain=domain, stratum=stratum, vote=vote, greedy_correct=greedy,
                       majority_correct=vote.answer == "1")

    outcomes = [
        outcome(1, "math", "easy", ["1", "1", "1", "1"], True),
        outcome(2, "math", "easy", ["1", "2", "1", "1"], False),
        outcome(3, "math", "hard", ["2", "2", "3", "4"], False),
        outcome(4, "code", "easy", ["1", "1", "1", "1"], True),
    ]
    by_stratum = aggregate(outcomes)
    assert by_stratum["easy"]["n"] == 3
    assert by_stratum["easy"]["accuracy"] == pytest.approx(2 / 3)
    assert by_stratum["easy"]["consistency"] == pytest.approx(2 / 3)
    assert by_stratum["easy"]["mean_agreement"] == pytest.approx((1 + 0.75 + 1) / 3)
    assert by_stratum["hard"]["majority_accuracy"] == 0.0
    assert by_stratum["all"]["n"] == 4
    by_domain = aggregate(outcomes, key="domain")
    assert set(by_domain) == {"code", "math", "all"} and by_domain["math"]["n"] == 3
    assert "math/easy" in aggregate(outcomes, key="domain/stratum")


# ---------------------------------------------------------------------------------------------- prompts

MATH = Problem(id="m", domain="math", prompt="What is 2 + 3?", answer="5")
MBPP = Problem(id="c", domain="code", prompt="Write a function to add two numbers.",
               tests="assert add(1, 2) == 3", examples=("assert add(1, 2) == 3",), entry_point="add")
HUMANEVAL = Problem(id="h", domain="code", prompt='def inc(x: int) -> int:\n    """Add one."""\n',
                    tests="def check(c):\n    assert c(1) == 2\n\ncheck(inc)", entry_point="inc")
MMLU = Problem(id="r", domain="reasoning", prompt="Which is a mammal?", choices=("Shark", "Dog", "Trout", "Crab"),
               answer="B")


def test_build_messages_asks_for_the_gradable_format() -> None:
    system, user = build_messages(MATH)
    assert system["role"] == "system" and "#### <number>" in system["content"]
    assert user == {"role": "user", "content": "What is 2 + 3?"}
    code_sys, code_user = build_messages(MBPP)
    assert "```python" in code_sys["content"] and "assert add(1, 2) == 3" in code_user["content"]
    he_user = build_messages(HUMANEVAL)[1]["content"]
    assert "def inc(x: int)" in he_user and "check" not in he_user  # hidden tests stay hidden
    mc_sys, mc_user = build_messages(MMLU)
    assert "Answer: <letter>" in mc_sys["content"] and "B) Dog" in mc_user["content"]


def _tokenizer(chat_template: str | None):  # type: ignore[no-untyped-def]
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "[PAD]": 1}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.chat_template = chat_template
    return fast


def test_render_prompt_uses_the_chat_template_when_there_is_one() -> None:
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    text = render_prompt(_tokenizer(template), MATH)
    assert text.startswith("<|system|>") and "<|user|>What is 2 + 3?<|end|>" in text
    assert text.endswith("<|assistant|>")


def test_render_prompt_falls_back_to_plain_text() -> None:
    text = render_prompt(_tokenizer(None), MMLU)
    assert "<|" not in text and "Question: Which is a mammal?" in text and "D) Crab" in text
    assert text.rstrip().endswith("Answer:")


def test_pass_at_k_unbiased_estimator() -> None:
    from consistency_worker.grading.voting import pass_at_k

    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
