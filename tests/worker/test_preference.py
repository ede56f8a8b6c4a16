"""The consistency-preference objective on the tiny model: the loss equals TRL's DPO (sigmoid) + SFT loss on
the same batch, the reference is the base with the adapter disabled, and the train stage trains pairs with
length grouping, checkpoints that resume to the same adapter, and a fingerprint that tells the objectives apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_core.spec import LoraConfig, PreferenceKnobs
from consistency_testkit.fixtures import PROBLEMS, TARGETS, run, single_torch_thread, stage_config, tiny_model_dir
from consistency_worker.data.prompts import build_messages
from consistency_worker.engines.preference import PairExample, build_pairs, pair_loss
from consistency_worker.engines.training import IGNORE_INDEX, TrainingDataError, wrap_lora
from consistency_worker.stages import PermanentStageError

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.torch")

WRONG = {"m1": "2 + 3 = 6\n#### 6", "m2": "4 + 3 = 12\n#### 12",
         "c1": "```python\ndef add(a, b):\n    return a - b\n```", "r1": "Answer: A"}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


def pair_rows(weights: tuple[float, ...] = (1.0, 0.6, 0.2, 0.8), copies: int = 1) -> list[dict]:
    return [{"messages": [*build_messages(p), {"role": "assistant", "content": TARGETS[p.id]}],
             "rejected": WRONG[p.id], "weight": w, "problemId": p.id, "source": "pair"}
            for _ in range(copies) for p, w in zip(PROBLEMS, weights, strict=True)]


def write_pairs(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny_lora_model():
    """The tiny model with a LoRA adapter moved away from zero (a fresh adapter is the base itself, where
    policy and reference agree and every DPO margin is 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir()), dtype=torch.float32)
    model = wrap_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), init_adapter_dir=None)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model_dir()))


def test_pairs_are_validated_and_encoded() -> None:
    from consistency_testkit.tinymodel import build_tokenizer

    tok = build_tokenizer()
    pairs, dropped = build_pairs(tok, pair_rows(), max_seq_len=2048)
    assert dropped == 0 and [p.weight for p in pairs] == [1.0, 0.6, 0.2, 0.8]
    first = pairs[0]
    answer = [t for t in first.rejected.labels if t != IGNORE_INDEX]
    assert tok.decode(answer) == WRONG["m1"] + "<|im_end|>\n"
    prompt = first.chosen.labels.index(next(t for t in first.chosen.labels if t != IGNORE_INDEX))
    assert first.chosen.input_ids[:prompt] == first.rejected.input_ids[:prompt]
    for bad, match in (({"rejected": None}, "`rejected` must be a string"), ({"weight": 0}, r"`weight` must be"),
                       ({"weight": True}, r"`weight` must be"), ({"weight": 1.5}, r"`weight` must be")):
        with pytest.raises(TrainingDataError, match=rf"pairs.jsonl:2: {match}"):
            build_pairs(tok, [pair_rows()[0], {**pair_rows()[1], **bad}], max_seq_len=2048)


def test_loss_equals_trl_dpo_plus_sft_on_the_same_batch(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    model, tokenizer = tiny_lora_model()
    knobs = PreferenceKnobs(beta=0.1, nll_weight=0.7)
    pairs, _ = build_pairs(tokenizer, pair_rows(weights=(1.0, 1.0, 1.0, 1.0)), max_seq_len=2048)
    with torch.no_grad():
        ours, _ = pair_loss(model, pairs, tokenizer.pad_token_id, knobs, torch.device("cpu"))
        # The reference really is the base: with the adapter disabled the loss is the one of a zero margin.
        with model.disable_adapter():
            base_logits = model(input_ids=torch.tensor([pairs[0].chosen.input_ids])).logits
        assert not torch.allclose(base_logits, model(input_ids=torch.tensor([pairs[0].chosen.input_ids])).logits)

    def split(pair: PairExample) -> dict[str, list[int]]:
        n = pair.chosen.labels.index(next(t for t in pair.chosen.labels if t != IGNORE_INDEX))
        return {"prompt_ids": pair.chosen.input_ids[:n], "chosen_ids": pair.chosen.input_ids[n:],
                "rejected_ids": pair.rejected.input_ids[n:]}

    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)([split(p) for p in pairs])
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=knobs.beta, loss_type=["sigmoid", "sft"],
                         loss_weights=[1.0, knobs.nll_weight], report_to=[], use_cpu=True, bf16=False)
    dataset = Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}])
    # TRL's own PEFT path (a base model and a peft_config) is the one whose reference is the base with the
    # adapter disabled, as ours; a model passed already wrapped would get a frozen copy of the adapter instead.
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir()), dtype=torch.float32)
    peft_config = PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = trl.DPOTrainer(model=base, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
    set_peft_model_state_dict(trainer.model, get_peft_model_state_dict(model))
    trainer.model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
    assert abs(float(ours) - float(theirs)) < 1e-4, (float(ours), float(theirs))
    assert float(ours) > knobs.nll_weight * 0.1  # a real loss, not a degenerate zero


def test_vote_margin_weights_scale_the_dpo_term() -> None:
    model, tokenizer = tiny_lora_model()
    pairs, _ = build_pairs(tokenizer, pair_rows(weights=(1.0, 1.0, 1.0, 1.0)), max_seq_len=2048)
    dpo_only = PreferenceKnobs(beta=0.1, nll_weight=0.0)
    with torch.no_grad():
        full, _ = pair_loss(model, pairs[:1], tokenizer.pad_token_id, dpo_only, torch.device("cpu"))
        pairs[0].weight = 0.25
        quarter, _ = pair_loss(model, pairs[:1], tokenizer.pad_token_id, dpo_only, torch.device("cpu"))
    assert float(quarter) == pytest.approx(float(full) * 0.25, rel=1e-6)


def pref_config(store: str, data: str, key: str, **params: object):
    base = {"dataUri": data, "epochs": 2, "learningRate": 1e-2, "batchSize": 2, "gradientAccumulation": 1,
            "maxSeqLen": 512, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}, "checkpointSteps": 3,
            "method": "lora", "objective": "preference", "preference": {"beta": 0.5, "nllWeight": 1.0}}
    return stage_config("train", store, str(tiny_model_dir()), {**base, **params}, key=key)


class Preempted(Exception):
    pass


def test_train_stage_learns_pairs_and_resumes_to_the_same_adapter(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from consistency_worker.stages import train as train_stage

    store = tmp_path / "store"
    data = write_pairs(tmp_path / "pairs.jsonl", pair_rows(copies=2))  # 8 pairs: 4 steps/epoch, 8 in all
    whole = run(pref_config(str(store), data, "whole"), tmp_path / "s1")
    assert whole.ok and whole.metrics["steps"] == 8 and whole.metrics["objective"] == "preference"
    assert "DPO + NLL" in whole.message
    curve = [r["loss"] for r in json.loads((store / "whole" / "loss.json").read_text())["steps"]]
    assert sum(curve[4:]) < sum(curve[:4]) * 0.9, curve  # epoch 2 below epoch 1 (the same pairs)
    latest = json.loads((store / "whole" / "checkpoints" / "latest.json").read_text())
    assert latest["fingerprint"]["objective"] == "preference" and latest["fingerprint"]["beta"] == 0.5

    def preempt(step: int) -> None:
        if step == 5:  # last checkpoint: step 4 (end of epoch 1)
            raise Preempted(f"after step {step}")

    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(pref_config(str(store), data, "cut"), tmp_path / "s2")
    monkeypatch.setattr(train_stage, "on_step_hook", None)
    resumed = run(pref_config(str(store), data, "cut"), tmp_path / "s3")
    assert resumed.metrics["resumedFromStep"] == 4 and resumed.metrics["steps"] == 8
    first = safetensors.load_file(str(store / "whole" / "adapter" / "adapter_model.safetensors"))
    second = safetensors.load_file(str(store / "cut" / "adapter" / "adapter_model.safetensors"))
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)

    # Another beta is another objective: its run does not resume the preference checkpoint.
    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(pref_config(str(store), data, "beta"), tmp_path / "s4")
    monkeypatch.setattr(train_stage, "on_step_hook", None)
    other = run(pref_config(str(store), data, "beta", preference={"beta": 0.2, "nllWeight": 1.0}), tmp_path / "s5")
    assert "resumedFromStep" not in other.metrics


def test_preference_rows_are_required_and_full_fine_tuning_is_refused(tmp_path: Path) -> None:
    from consistency_testkit.fixtures import write_train_data
    from pydantic import ValidationError

    sft_data = str(write_train_data(tmp_path / "train.jsonl"))
    with pytest.raises(PermanentStageError, match=r"train.jsonl:1: `rejected` must be a string"):
        run(pref_config(str(tmp_path / "store"), sft_data, "sft-rows"), tmp_path / "s1")
    with pytest.raises(ValidationError, match="objective preference needs method qlora or lora"):
        pref_config(str(tmp_path / "store"), sft_data, "full", method="full")
