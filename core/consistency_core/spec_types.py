"""The spec's shared vocabulary: stage names, dataset formats and roles, engines, domains and the bounded
scalar types (probabilities, sampling temperatures) the spec's sections use. Import it through
consistency_core.spec, the spec's public entry."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
MIN_SAMPLING_TEMPERATURE = 0.05


# Temperatures of the k samples (never of the greedy answer, which is always decoded at 0).
Temperature = Annotated[float, Field(ge=MIN_SAMPLING_TEMPERATURE, le=2.0)]

DOMAINS = ("math", "code", "reasoning")
MAX_EPOCHS = 100
Domain = Literal["math", "code", "reasoning"]


class DatasetFormat(StrEnum):
    gsm8k = "gsm8k"
    mbpp = "mbpp"
    humaneval = "humaneval"
    mmlu = "mmlu"
    jsonl = "jsonl"


class DatasetRole(StrEnum):
    train = "train"
    scan = "scan"
    eval = "eval"


class StageName(StrEnum):
    prepare = "prepare"
    generate = "generate"
    distill = "distill"
    train = "train"
    evaluate = "evaluate"
    report = "report"  # the campaign's last stage: report, model card, optional merged export


class Backend(StrEnum):
    auto = "auto"
    hf = "hf"
    vllm = "vllm"


class Seeding(StrEnum):
    """How sampled answers are seeded on vLLM (the hf backend always seeds per sequence)."""

    per_sequence = "perSequence"
    engine = "engine"
