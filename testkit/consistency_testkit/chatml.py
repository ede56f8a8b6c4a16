"""ChatML, the chat framing of SmolLM2 and of every tokenizer built here (the tiny test model, the local
demo's word-level model, gpu_check's BPE): every message is framed by <|im_start|>role ... <|im_end|>,
and generation stops at <|im_end|>. One copy, so prompts look the same to all of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_tokenizer(core: Any, *, model_max_length: int, extra_special_tokens: Sequence[str] = (),
                     **options: Any):  # -> transformers.PreTrainedTokenizerFast
    """A fast tokenizer around `core` (a `tokenizers.Tokenizer` whose vocabulary holds the ChatML specials)
    with ChatML's framing: pad PAD, end of sequence IM_END (generation stops there), IM_START special, the
    chat template, and left padding (decoder-only batched generation needs it). `options` go to
    PreTrainedTokenizerFast as they are (e.g. an `unk_token`)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=[IM_START, *extra_special_tokens],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="left",
        **options,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
