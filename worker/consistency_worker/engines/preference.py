"""The consistency-preference objective (`objective: preference`): DPO with an NLL term on the chosen answer.

Each training row is a pair distill built from one problem's votes: `messages` ends with the chosen answer (a
sample of the modal answer), `rejected` holds a sample of the least-voted answer, `weight` the vote margin / k
(ScPO, Prasad et al. 2024). Per pair i, with policy log-probabilities pi and reference log-probabilities ref
summed over the answer's tokens:

    dpo_i  = -log sigmoid(beta * ((pi(chosen) - ref(chosen)) - (pi(rejected) - ref(rejected))))
    loss   = mean_i(weight_i * dpo_i) + nll_weight * mean over the chosen answers' tokens of -log pi(token)

which is TRL's DPO loss with `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, nll_weight]` when every weight is
1 (a test checks the two agree), IRPO's DPO + NLL otherwise. The reference policy is the same model with its
LoRA adapter disabled (peft's `disable_adapter()`), under no_grad: no second copy of the base in memory. A
1B.2 run that continues 1B.1's adapter therefore measures against the base model, not against 1B.1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consistency_core.spec import PreferenceKnobs

from consistency_worker.engines.training import (
    IGNORE_INDEX,
    Example,
    TrainingDataError,
    collate,
    encode_example,
    validate_messages,
)


@dataclass
class PairExample:
    chosen: Example
    rejected: Example
    weight: float

    @property
    def length(self) -> int:
        """What length grouping sorts by: both sequences run in the same micro-batch."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)

    @property
    def labels(self) -> list[int]:
        return self.chosen.labels + self.rejected.labels


def build_pairs(tokenizer: Any, rows: Sequence[dict[str, Any]], max_seq_len: int,
                source: str = "pairs.jsonl") -> tuple[list[PairExample], int]:
    """Encode pair rows; returns (pairs, rows dropped because truncation left either answer no token)."""
    pairs, dropped = [], 0
    for i, row in enumerate(rows, start=1):
        where = f"{source}:{i}"
        messages = validate_messages(row, where)
        rejected, weight = row.get("rejected"), row.get("weight")
        if not isinstance(rejected, str):
            raise TrainingDataError(f"{where}: `rejected` must be a string (objective preference trains on "
                                    "distill's pairs.jsonl)")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
                or not 0 < weight <= 1:
            raise TrainingDataError(f"{where}: `weight` must be a number in (0, 1], got {weight!r}")
        chosen = encode_example(tokenizer, messages, max_seq_len)
        other = encode_example(tokenizer, [*messages[:-1], {"role": "assistant", "content": rejected}], max_seq_len)
        if chosen is None or other is None:
            dropped += 1
        else:
            pairs.append(PairExample(chosen, other, float(weight)))
    return pairs, dropped


def _token_logps(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(log-probability of each next token, mask of the answer tokens), both shaped (rows, width - 1)."""
    import torch.nn.functional as F

    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
    labels = inputs["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    # cross_entropy per token: no (rows, width, vocab) log-softmax copy kept beside the logits.
    logps = -F.cross_entropy(logits.float().flatten(0, 1), labels.clamp(min=0).flatten(),
                             reduction="none").view(labels.shape)
    return logps * mask, mask


def pair_loss(model: Any, batch: Sequence[PairExample], pad_id: int, knobs: PreferenceKnobs,
              device: Any) -> tuple[Any, int]:
    """The objective on one micro-batch: (loss, positions computed). Chosen and rejected rows run in one
    forward (as TRL's concatenated forward), the reference in a second one with the adapter disabled."""
    import torch

    inputs = {k: v.to(device) for k, v in collate([p.chosen for p in batch] + [p.rejected for p in batch],
                                                  pad_id).items()}
    logps, mask = _token_logps(model, inputs)
    with torch.no_grad(), model.disable_adapter():
        ref_logps, _ = _token_logps(model, inputs)
    n = len(batch)
    policy, reference = logps.sum(dim=1), ref_logps.sum(dim=1)
    margin = (policy[:n] - reference[:n]) - (policy[n:] - reference[n:])
    weights = torch.tensor([p.weight for p in batch], device=margin.device, dtype=margin.dtype)
    dpo = -(weights * torch.nn.functional.logsigmoid(knobs.beta * margin)).mean()
    nll = -logps[:n][mask[:n]].mean()
    return dpo + knobs.nll_weight * nll, int(inputs["attention_mask"].sum())
