"""A tiny-config build of the demo model: real training, real save, loads back like any checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from consistency_local.demo_data import write_splits
from consistency_local.demo_model import (
    DemoModelConfig,
    demo_messages,
    ensure_demo_model,
    strip_annotations,
)
from consistency_local.demo_tokenizer import build_tokenizer

pytest.importorskip("transformers")

TINY = DemoModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, steps=6,
                       batch_size=8, warmup_steps=2, max_positions=512)


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("demo-data")
    return write_splits(out, seed=0, sizes={"pretrain": 64, "train": 8, "eval": 8})


@pytest.fixture(scope="module")
def built(splits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    return ensure_demo_model(splits["pretrain"], TINY, cache_root=cache, log=lambda _: None)


def test_tokenizer_round_trips_text_and_splits_digits(splits: dict[str, Path]) -> None:
    rows = [json.loads(line) for line in splits["pretrain"].read_text().splitlines()]
    tokenizer = build_tokenizer(r["question"] + "\n" + r["answer"] for r in rows)
    for row in rows:
        text = row["question"] + "\n" + row["answer"]
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    pieces = tokenizer.tokenize("has 347 apples")
    assert [p for p in pieces if p.isdigit()] == ["3", "4", "7"]
    # An unseen word is <|unk|>, not a crash; digits are always known.
    assert tokenizer.unk_token_id in tokenizer("zebra 12")["input_ids"]


def test_built_model_loads_with_auto_classes_and_chat_template(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    assert model.config.model_type == "llama"
    prompt = tokenizer.apply_chat_template(demo_messages("Mia has 3 apples. How many apples does Mia have?"),
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids["input_ids"][0].tolist()
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    info = json.loads((built / "build-info.json").read_text())
    assert info["config"]["steps"] == TINY.steps


@pytest.mark.learning
def test_training_lowered_the_loss(splits: dict[str, Path], tmp_path: Path) -> None:
    from consistency_local.demo_model import build_demo_model

    info = build_demo_model(splits["pretrain"], tmp_path / "m", TINY.__class__(**{**TINY.__dict__, "steps": 30}),
                            log=lambda _: None)
    # A random model over a ~200-token vocabulary starts near ln(200) ~ 5.3 nats.
    assert info["final_loss"] < 4.0


def test_cache_is_keyed_by_config_and_data(splits: dict[str, Path], built: Path) -> None:
    cache = built.parent
    again = ensure_demo_model(splits["pretrain"], TINY, cache_root=cache, log=lambda _: None)
    assert again == built
    other = TINY.__class__(**{**TINY.__dict__, "seed": 1})
    assert other.key("x") != TINY.key("x")
    assert TINY.key("x") != TINY.key("y")


def test_strip_annotations() -> None:
    assert strip_annotations("3 + 4 = <<3+4=7>>7 apples\n#### 7") == "3 + 4 = 7 apples\n#### 7"
