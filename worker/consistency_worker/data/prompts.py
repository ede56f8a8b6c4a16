"""Chat prompts that ask for a gradable final-answer format per domain."""

from __future__ import annotations

from typing import Any

from consistency_worker.data.problems import Problem

SYSTEM_PROMPTS = {
    "math": "You are a careful math tutor. Solve the problem step by step, then end your response with a "
    "final line of the form `#### <number>` holding only the final numeric answer.",
    "code": "You are an expert Python programmer. Reply with exactly one ```python code block that contains "
    "the complete solution (imports and every function it needs), and nothing after the block.",
    "reasoning": "You are a knowledgeable assistant answering a multiple-choice question. Think briefly, "
    "then end your response with a final line of the form `Answer: <letter>`.",
}
LETTERS = "ABCDEFGHIJ"
# A base model given the plain layout tends to answer, then write the next "Question:" itself; generation
# stops there instead of spending the rest of the budget on made-up questions.
PLAIN_STOP_STRINGS = ("\nQuestion:",)


def user_message(problem: Problem) -> str:
    if problem.domain == "code":
        if problem.entry_point and f"def {problem.entry_point}(" in problem.prompt:
            return f"Complete the following Python function:\n\n```python\n{problem.prompt.rstrip()}\n```"
        text = problem.prompt.strip()
        if problem.examples:
            text += "\n\nYour code should pass these tests:\n\n" + "\n".join(problem.examples)
        return text
    if problem.domain == "reasoning" and problem.choices:
        options = "\n".join(f"{LETTERS[i]}) {choice}" for i, choice in enumerate(problem.choices))
        return f"{problem.prompt.strip()}\n\n{options}"
    return problem.prompt.strip()


def build_messages(problem: Problem) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPTS[problem.domain]},
        {"role": "user", "content": user_message(problem)},
    ]


def render_prompt(tokenizer: Any, problem: Problem) -> str:
    """The text to generate from: the tokenizer's chat template when it has one, else a plain layout
    (instruction, blank line, question, blank line, "Answer:") that base models continue sensibly."""
    messages = build_messages(problem)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_prompt(messages)


def plain_prompt(messages: list[dict[str, str]]) -> str:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [f"{'Question' if m['role'] == 'user' else 'Answer'}: {m['content']}"
             for m in messages if m["role"] != "system"]
    return "\n\n".join([system, *turns, "Answer:"]) if system else "\n\n".join([*turns, "Answer:"])


def stop_strings(tokenizer: Any) -> tuple[str, ...]:
    """Stop strings for prompts rendered by `render_prompt`: none with a chat template (the template's
    end-of-turn token is an EOS id), the plain layout's next-question marker otherwise."""
    return () if getattr(tokenizer, "chat_template", None) else PLAIN_STOP_STRINGS
