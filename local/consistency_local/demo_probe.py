"""Quick sampling probe of a demo model: greedy accuracy and consistency under sampling.

Used to size the demo model on the TRAIN split (never the eval split): the campaign only has
something to show if the starting model is right sometimes and inconsistent across samples.
Deliberately independent of the worker's stages so it can check a model before a campaign.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from consistency_local.demo_data import count_steps, final_answer, read_jsonl
from consistency_local.demo_model import demo_messages

_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


@dataclass(frozen=True)
class ProbeResult:
    problems: int
    greedy_accuracy: float
    sample_accuracy: float  # share of all sampled answers that are right
    consistency: float  # share of problems whose k samples all give the same answer
    mean_agreement: float  # mean share of samples on the modal answer
    by_stratum: dict[str, float]  # greedy accuracy per GSM8K stratum
    seconds: float


def extract(completion: str) -> str | None:
    match = _FINAL.search(completion)
    return match.group(1).replace(",", "") if match else None


def _stratum(steps: int) -> str:
    return "easy" if steps <= 2 else "medium" if steps <= 5 else "hard"


def _generate(model, tokenizer, prompts: list[str], *, sample: bool, temperature: float, batch: int,
              max_new_tokens: int) -> list[str]:
    import torch

    out: list[str] = []
    for start in range(0, len(prompts), batch):
        enc = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc, do_sample=sample, temperature=temperature if sample else None, top_p=None, top_k=None,
                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def probe(model_dir: Path, data: Path, *, limit: int = 100, k: int = 5, temperature: float = 0.8,
          seed: int = 0, batch: int = 64, max_new_tokens: int = 160) -> ProbeResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = read_jsonl(data)[:limit]
    prompts = [tokenizer.apply_chat_template(demo_messages(r["question"]), add_generation_prompt=True,
                                             tokenize=False) for r in rows]
    gold = [final_answer(r["answer"]) for r in rows]
    greedy = [extract(c) for c in _generate(model, tokenizer, prompts, sample=False, temperature=0.0,
                                            batch=batch, max_new_tokens=max_new_tokens)]
    samples = [extract(c) for c in _generate(model, tokenizer, [p for p in prompts for _ in range(k)],
                                             sample=True, temperature=temperature, batch=batch,
                                             max_new_tokens=max_new_tokens)]
    per_problem = [samples[i * k:(i + 1) * k] for i in range(len(rows))]
    agreements = [Counter(s).most_common(1)[0][1] / k for s in per_problem]
    strata: dict[str, list[bool]] = {}
    for row, g, ok in zip(rows, gold, greedy, strict=True):
        strata.setdefault(_stratum(count_steps(row["answer"])), []).append(ok == g)
    return ProbeResult(
        problems=len(rows),
        greedy_accuracy=sum(a == g for a, g in zip(greedy, gold, strict=True)) / len(rows),
        sample_accuracy=sum(a == g for s, g in zip(per_problem, gold, strict=True) for a in s) / (k * len(rows)),
        consistency=sum(a == 1.0 for a in agreements) / len(rows),
        mean_agreement=sum(agreements) / len(rows),
        by_stratum={s: round(sum(v) / len(v), 3) for s, v in sorted(strata.items())},
        seconds=round(time.monotonic() - started, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data", type=Path, help="GSM8K-format JSONL (use the TRAIN split)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    print(probe(args.model_dir, args.data, limit=args.limit, k=args.k, temperature=args.temperature))


if __name__ == "__main__":
    main()
