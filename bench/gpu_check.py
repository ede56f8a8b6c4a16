"""Device check, python side: one step per invocation, driven by bench/gpu_check.sh (which gives every step
its own timeout and merges the figures). Nothing is downloaded: the model is built here with random weights
and realistic shapes (head dim 128, a 32k BPE vocabulary trained on the Python standard library's sources,
the ChatML template, two EOS ids), and trained by the QLoRA step, so that greedy outputs are peaked enough
to compare engines.

    python bench/gpu_check.py STEP --work DIR [--cpu]
    python bench/gpu_check.py          (no arguments: the whole check through bench/gpu_check.sh)

Steps (in order; later steps use what earlier ones left in DIR):
  env        versions of the stack, the GPU, CPUs visible
  model      build the random model + tokenizer
  qlora      QLoRA r=64, 40 steps, checkpoint every 10: a reference run, and a run interrupted at step 15
             then resumed; both must end at the same loss. Attention dtype (must be bf16 on CUDA),
             steps/s, peak GPU memory
  vllm       serve the adapter with vLLM (max_lora_rank 64) and compare its greedy tokens with the merged
             HF model; throughput of 1024 prompts x (1 + 5) x 256 tokens, per-sequence seeds vs engine seed
  stages     the generate and evaluate stages end to end with the adapter (backend auto)
  expansion  a 5-step 1B.2 continuation (init adapter = the QLoRA adapter) on the 4-bit base
  sandbox    2,000 programs through the sandbox (the driver pins it with `taskset -c 0-3`): false timeouts
  report     merge every step's JSON into one file and print a table

--cpu: small sizes, and every CUDA-only part prints "skipped: no CUDA" instead of running. Without CUDA the
same happens automatically. A step's JSON: {"step", "status": ok|skipped|failed, "figures", "skipped",
"error", "seconds"}; a failed check exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _sub in ("core", "report", "worker", "operator", "local", "testkit"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

STEPS = ("env", "model", "qlora", "vllm", "stages", "expansion", "sandbox")
# The BPE's own end-of-text token beside the ChatML specials (consistency_testkit.chatml).
ENDOFTEXT = "<|endoftext|>"


@dataclass(frozen=True)
class Sizes:
    """Full sizes for one H200 within the 8-minute budget; --cpu shrinks everything but the head dim."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    corpus_mib: float
    train_problems: int
    train_epochs: int
    batch_size: int
    checkpoint_steps: int
    interrupt_at: int
    lora_r: int
    compare_prompts: int
    compare_tokens: int
    throughput_prompts: int
    throughput_samples: int
    throughput_tokens: int
    stage_problems: int
    stage_samples: int
    stage_tokens: int
    expansion_steps: int
    sandbox_programs: int

    @property
    def train_steps(self) -> int:
        return self.train_problems // self.batch_size * self.train_epochs


FULL = Sizes(vocab=32000, hidden=1024, layers=8, heads=8, kv_heads=4, intermediate=2816, corpus_mib=12.0,
             train_problems=16, train_epochs=5, batch_size=2, checkpoint_steps=10, interrupt_at=15, lora_r=64,
             compare_prompts=16, compare_tokens=24, throughput_prompts=1024, throughput_samples=5,
             throughput_tokens=256, stage_problems=64, stage_samples=5, stage_tokens=128, expansion_steps=5,
             sandbox_programs=2000)
CPU = Sizes(vocab=1024, hidden=256, layers=2, heads=2, kv_heads=1, intermediate=512, corpus_mib=0.5,
            train_problems=4, train_epochs=2, batch_size=1, checkpoint_steps=2, interrupt_at=3, lora_r=8,
            compare_prompts=2, compare_tokens=4, throughput_prompts=8, throughput_samples=5, throughput_tokens=8,
            stage_problems=3, stage_samples=2, stage_tokens=8, expansion_steps=2, sandbox_programs=12)


class Skip(Exception):
    """The whole step cannot run here (a missing package or device); the reason is printed."""


class Report:
    def __init__(self, step: str, *, use_cuda: bool):
        self.step = step
        self.use_cuda = use_cuda
        self.figures: dict[str, Any] = {}
        self.skipped: list[str] = []
        self.checks: dict[str, bool] = {}

    def figure(self, name: str, value: Any) -> None:
        self.figures[name] = value
        print(f"  {name} = {value}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")
        print(f"  skipped: {why} ({what})", flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks[name] = bool(ok)
        print(f"  check {name}: {'ok' if ok else 'FAILED'}{' (' + detail + ')' if detail else ''}", flush=True)


def has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(package)
    except PackageNotFoundError:
        return None


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ env


def step_env(work: Path, sizes: Sizes, rep: Report) -> None:
    import torch

    rep.figure("python", platform.python_version())
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "vllm", "tokenizers", "pydantic"):
        rep.figure(name, version(name) or "missing")
    rep.figure("torch_cuda", torch.version.cuda)
    rep.figure("cpus_visible", len(os.sched_getaffinity(0)))
    if not rep.use_cuda:
        rep.skip("gpu", "no CUDA")
        return
    props = torch.cuda.get_device_properties(0)
    rep.figure("gpu", torch.cuda.get_device_name(0))
    rep.figure("gpu_memory_gib", round(props.total_memory / 2**30, 1))
    rep.figure("gpu_capability", f"{props.major}.{props.minor}")
    rep.figure("bf16_supported", torch.cuda.is_bf16_supported())


# ---------------------------------------------------------------------------------------------- model


def corpus_files(limit_bytes: int) -> list[str]:
    """Local text to train the BPE on: the standard library's sources (always there, no download)."""
    root = Path(os.__file__).parent
    files, total = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        files.append(str(path))
        total += path.stat().st_size
        if total >= limit_bytes:
            break
    return files


def build_tokenizer(sizes: Sizes):  # -> PreTrainedTokenizerFast
    from consistency_testkit.chatml import IM_END, IM_START, PAD, chatml_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=sizes.vocab, special_tokens=[ENDOFTEXT, IM_START, IM_END, PAD],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train(corpus_files(int(sizes.corpus_mib * 2**20)), trainer)
    return chatml_tokenizer(core, model_max_length=2048, extra_special_tokens=[ENDOFTEXT], bos_token=None)


def step_model(work: Path, sizes: Sizes, rep: Report) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    tokenizer = build_tokenizer(sizes)
    rep.figure("tokenizer_s", round(time.perf_counter() - start, 1))
    eos_ids = [tokenizer.convert_tokens_to_ids(tokenizer.eos_token), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
        head_dim=sizes.hidden // sizes.heads, max_position_embeddings=2048, rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, bos_token_id=None, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
    out = work / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    rep.figure("vocab", len(tokenizer))
    rep.figure("head_dim", config.head_dim)
    rep.figure("eos_ids", eos_ids)
    rep.figure("parameters_m", round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
    rep.check("head_dim_128", config.head_dim == 128)
    rep.check("two_eos_ids", len(set(eos_ids)) == 2)


def model_dir(work: Path) -> Path:
    path = work / "model"
    if not (path / "config.json").is_file():
        raise Skip("no model (the model step did not finish)")
    return path


# ---------------------------------------------------------------------------------------------- data


def problems(count: int, *, offset: int = 0) -> list:  # -> list[Problem]
    """Synthetic problems: mostly math (gradable from the text), plus a code and a reasoning one."""
    from consistency_worker.data.problems import Problem

    out = [Problem(id=f"m{i}", domain="math", prompt=f"What is {i + 2} + {3 * i + 1}?", answer=str(4 * i + 3))
           for i in range(offset, offset + count)]
    if count >= 3:
        out[-2] = Problem(id=f"c{offset}", domain="code", prompt="Write a function add(a, b) returning the sum.",
                          tests="assert add(1, 2) == 3", entry_point="add")
        out[-1] = Problem(id=f"r{offset}", domain="reasoning", prompt="Which is a mammal?",
                          choices=("Shark", "Dog", "Trout", "Crab"), answer="B")
    return out


def target(problem: Any) -> str:
    if problem.domain == "code":
        return "```python\ndef add(a, b):\n    return a + b\n```"
    if problem.domain == "reasoning":
        return "A dog is a mammal.\nAnswer: B"
    return f"The sum is {problem.answer}.\n#### {problem.answer}"


def write_train_data(path: Path, items: list) -> Path:
    from consistency_testkit import fixtures

    return fixtures.write_train_data(path, items, target=target)


def write_problems(path: Path, items: list) -> Path:
    from consistency_testkit import fixtures

    return fixtures.write_problems(path, items)


def stage_config(stage: str, work: Path, key: str, params: dict[str, Any], *, backend: str = "hf",
                 seed: int = 7, model: Path | None = None):  # -> StageConfig
    from consistency_testkit import fixtures

    return fixtures.stage_config(stage, str(work / "store"), str(model or model_dir(work)), params, key=key,
                                 seed=seed, backend=backend, campaign="gpu-check", max_model_len=1024)


def run_stage(config: Any, scratch: Path):  # -> StageResult
    from consistency_testkit import fixtures

    scratch.mkdir(parents=True, exist_ok=True)
    return fixtures.run(config, scratch)


# ---------------------------------------------------------------------------------------------- qlora


class AttentionDtypes:
    """Records the dtype of every attention module's output during training (a global forward hook)."""

    def __init__(self) -> None:
        import torch

        self.seen: set[str] = set()
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        if type(module).__name__.endswith("Attention"):
            first = output[0] if isinstance(output, tuple) else output
            dtype = getattr(first, "dtype", None)
            if dtype is not None:
                self.seen.add(str(dtype).replace("torch.", ""))

    def close(self) -> None:
        self._handle.remove()


class Interrupted(Exception):
    pass


def train_params(data: Path, sizes: Sizes, *, quantization: str, epochs: int | None = None,
                 learning_rate: float = 2e-3, **extra: Any) -> dict[str, Any]:
    """`quantization` nf4: method qlora (4-bit base); none: method lora (the CPU mode's choice, for speed)."""
    training = {
        "epochs": epochs or sizes.train_epochs, "learningRate": learning_rate, "batchSize": sizes.batch_size,
        "gradientAccumulation": 1, "maxSeqLen": 512, "checkpointSteps": sizes.checkpoint_steps,
        "lora": {"r": sizes.lora_r, "alpha": 2 * sizes.lora_r, "dropout": 0.0},
        "method": "qlora" if quantization == "nf4" else "lora",
    }
    return {"dataUri": str(data), "training": training, **extra}


def step_qlora(work: Path, sizes: Sizes, rep: Report) -> None:
    import torch
    from consistency_worker.stages import train as train_stage

    four_bit = rep.use_cuda and has("bitsandbytes")
    if not rep.use_cuda:
        rep.skip("4-bit NF4 base", "no CUDA")
    elif not four_bit:
        rep.skip("4-bit NF4 base", "bitsandbytes not installed")
    quantization = "nf4" if four_bit else "none"
    data = write_train_data(work / "train.jsonl", problems(sizes.train_problems))
    params = train_params(data, sizes, quantization=quantization)
    rep.figure("method", "QLoRA nf4" if four_bit else f"LoRA ({'cuda' if rep.use_cuda else 'cpu'})")
    rep.figure("steps_planned", sizes.train_steps)

    dtypes = AttentionDtypes()
    if rep.use_cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        reference = run_stage(stage_config("train", work, "qlora-ref", params), work / "scratch" / "ref")
    finally:
        dtypes.close()
    seconds = time.perf_counter() - start
    rep.figure("reference_final_loss", reference.metrics["finalLoss"])
    rep.figure("stage_method", reference.metrics.get("method"))
    rep.check("four_bit_as_asked", reference.metrics.get("quantization") == quantization,
              str(reference.metrics.get("methodFallback", "")))
    # The training loop's own clock (no model load or upload) when the manifest has it, else the stage's.
    extra = read_json(work / "store" / "qlora-ref" / "manifest.json").get("extra", {})
    train_s = extra.get("trainSeconds") or seconds
    rep.figure("stage_s", round(seconds, 1))
    rep.figure("steps_per_s", round(reference.metrics["steps"] / train_s, 2))
    rep.figure("train_tokens_per_s", round(reference.metrics["tokens"] / train_s))
    rep.figure("attention_dtypes", sorted(dtypes.seen))
    if rep.use_cuda:
        rep.figure("peak_gpu_mib", round(torch.cuda.max_memory_allocated() / 2**20, 1))
        rep.check("attention_bf16", dtypes.seen == {"bfloat16"}, f"saw {sorted(dtypes.seen)}")
    else:
        rep.skip("attention runs in bf16", "no CUDA")

    def preempt(step: int) -> None:
        if step == sizes.interrupt_at:
            raise Interrupted(step)

    interrupted_config = stage_config("train", work, "qlora", params)
    train_stage.on_step_hook = preempt
    try:
        run_stage(interrupted_config, work / "scratch" / "run1")
        rep.check("interrupted", False, "the hook did not stop the run")
    except Interrupted:
        rep.figure("interrupted_at_step", sizes.interrupt_at)
    finally:
        train_stage.on_step_hook = None
    resumed = run_stage(interrupted_config, work / "scratch" / "run2")
    rep.figure("resumed_from_step", resumed.metrics.get("resumedFromStep"))
    rep.figure("resumed_final_loss", resumed.metrics["finalLoss"])
    per_epoch = sizes.train_problems // sizes.batch_size
    last_checkpoint = max(s for s in range(1, sizes.interrupt_at + 1)
                          if s % sizes.checkpoint_steps == 0 or s % per_epoch == 0)
    rep.check("resumed_from_last_checkpoint", resumed.metrics.get("resumedFromStep") == last_checkpoint,
              f"expected step {last_checkpoint}")
    rep.check("steps", resumed.metrics["steps"] == reference.metrics["steps"] == sizes.train_steps)
    ref_loss, res_loss = reference.metrics["finalLoss"], resumed.metrics["finalLoss"]
    # CPU is bit-exact; CUDA kernels (atomics in backward, bitsandbytes) may differ in the last digits.
    tolerance = 2e-2 if rep.use_cuda else 1e-6
    rep.check("same_final_loss", abs(ref_loss - res_loss) <= tolerance * max(1.0, abs(ref_loss)),
              f"{ref_loss} vs {res_loss}")
    losses = read_json(work / "store" / "qlora" / "loss.json")["steps"]
    rep.figure("loss_first_last", [losses[0]["loss"], losses[-1]["loss"]])
    rep.check("loss_decreased", losses[-1]["loss"] < losses[0]["loss"])


def adapter_dir(work: Path) -> Path:
    path = work / "store" / "qlora" / "adapter"
    if not (path / "adapter_config.json").is_file():
        raise Skip("no adapter (the qlora step did not finish)")
    return path


# ----------------------------------------------------------------------------------------------- vllm


def hf_greedy_tokens(model_path: Path, adapter: Path, prompts: list[list[int]], max_new: int, eos: list[int],
                     device: str) -> list[list[int]]:
    """Greedy token ids of the merged (base + LoRA) HF model, cut at the first EOS."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    out = []
    with torch.inference_mode():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids),
                                 dtype=torch.long, device=device), max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos[0])
            out.append(cut_at_eos(gen[0, len(ids):].tolist(), eos))
    del model, base
    if device == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()  # leave the memory to the vLLM engine started next
    return out


def cut_at_eos(tokens: list[int], eos: list[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    def prefix(x: list[int], y: list[int]) -> int:
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        return n

    pairs = list(zip(a, b, strict=True))
    return {
        "exact": round(sum(x == y for x, y in pairs) / len(pairs), 3),
        "first_token": round(sum(x[:1] == y[:1] for x, y in pairs) / len(pairs), 3),  # both at EOS agree
        "mean_common_prefix": round(sum(prefix(x, y) for x, y in pairs) / len(pairs), 2),
    }


def step_vllm(work: Path, sizes: Sizes, rep: Report) -> None:
    from consistency_core.spec import ModelRef
    from consistency_worker.data.prompts import render_prompt
    from consistency_worker.engines.answering import problem_seed
    from consistency_worker.engines.backends import GenerationRequest, encode_prompt
    from consistency_worker.engines.backends.vllm import build_batch, engine_kwargs, eos_token_ids
    from consistency_worker.engines.model_loading import load_tokenizer, resolve_model

    model_path, adapter = model_dir(work), adapter_dir(work)
    resolved = resolve_model(ModelRef(uri=str(model_path), max_model_len=1024))
    tokenizer = load_tokenizer(resolved)
    eos = eos_token_ids(resolved, tokenizer)
    rep.figure("eos_ids_sent_to_vllm", eos)
    rep.check("both_eos_ids_sent", len(eos) == 2, str(eos))
    kwargs = engine_kwargs(resolved, adapter_dir=adapter, tensor_parallel_size=1, seed=0)
    rep.figure("max_lora_rank", kwargs["max_lora_rank"])
    # r=64 must be served at max_lora_rank 64 (not rounded up to 128, which wastes LoRA kernel work).
    rep.check("max_lora_rank_fits", kwargs["max_lora_rank"] == sizes.lora_r, f"r={sizes.lora_r}")
    trained = problems(sizes.train_problems)[: sizes.compare_prompts]
    prompt_ids = [encode_prompt(tokenizer, render_prompt(tokenizer, p)) for p in trained]
    device = "cuda" if rep.use_cuda else "cpu"
    hf_tokens = hf_greedy_tokens(model_path, adapter, prompt_ids, sizes.compare_tokens, eos, device)
    rep.figure("hf_merged_mean_tokens", round(sum(map(len, hf_tokens)) / len(hf_tokens), 1))

    # The throughput batch: per prompt one greedy request and one n=k sampled request, as the stages send.
    pool = problems(sizes.throughput_prompts, offset=1000)
    texts = [render_prompt(tokenizer, p) for p in pool]
    requests = []
    for text, p in zip(texts, pool, strict=True):
        seed = problem_seed(7, p.id)
        requests += [GenerationRequest(text, 1, 0.0, sizes.throughput_tokens, seed),
                     GenerationRequest(text, sizes.throughput_samples, 0.8, sizes.throughput_tokens, seed)]
    inputs, per_seq = build_batch(requests, lambda t: encode_prompt(tokenizer, t), stop=(), seeding="perSequence")
    _, engine = build_batch(requests, lambda t: encode_prompt(tokenizer, t), stop=(), seeding="engine")
    sequences = sum(f["n"] for f in per_seq)
    rep.figure("throughput_sequences", sequences)
    rep.check("batch_shape", len(inputs) == 2 * len(pool) and sequences == len(pool) * (1 + sizes.throughput_samples))
    if not rep.use_cuda:
        rep.skip("vLLM engine: greedy comparison and throughput", "no CUDA")
        return
    if not has("vllm"):
        rep.skip("vLLM engine: greedy comparison and throughput", "vllm not installed")
        return

    from consistency_worker.engines.backends.vllm import VLLMBackend
    from vllm import SamplingParams

    os.environ.setdefault("CONSISTENCY_VLLM_GPU_MEMORY_UTILIZATION", "0.6")
    start = time.perf_counter()
    backend = VLLMBackend(resolved, adapter_dir=adapter, seed=0)
    rep.figure("engine_start_s", round(time.perf_counter() - start, 1))
    try:
        greedy = [GenerationRequest(render_prompt(tokenizer, p), 1, 0.0, sizes.compare_tokens, 0) for p in trained]
        g_inputs, g_fields = build_batch(greedy, lambda t: encode_prompt(tokenizer, t), stop=(), seeding="engine",
                                         stop_token_ids=eos)
        outs = backend.llm.generate(g_inputs, [SamplingParams(**f) for f in g_fields],
                                    lora_request=backend.lora_request, use_tqdm=False)
        vllm_tokens = [cut_at_eos(list(o.outputs[0].token_ids), eos) for o in outs]
        agree = agreement(vllm_tokens, hf_tokens)
        rep.figure("greedy_agreement_vllm_vs_hf_merged", agree)
        rep.check("greedy_tokens_match", agree["first_token"] >= 0.9 and agree["exact"] >= 0.75, str(agree))
        plain = backend.llm.generate(g_inputs, [SamplingParams(**f) for f in g_fields], use_tqdm=False)
        rep.check("adapter_changes_outputs",
                  [cut_at_eos(list(o.outputs[0].token_ids), eos) for o in plain] != vllm_tokens)

        # The stages' own path: one generate_requests call with greedy + k samples per problem, twice.
        from consistency_core.spec import SamplingKnobs
        from consistency_worker.engines.answering import plan_requests

        knobs = SamplingKnobs(samples=5, temperature=0.8, max_new_tokens=max(8, sizes.compare_tokens))
        planned = plan_requests([render_prompt(tokenizer, p) for p in trained],
                                [problem_seed(7, p.id) for p in trained], knobs)
        first, again = backend.generate_requests(planned), backend.generate_requests(planned)
        rep.check("per_sequence_seeds_reproduce", first == again)
        answers = [g for out in first for g in out]
        rep.figure("mixed_call_budget_hit_share", round(sum(g.hit_limit for g in answers) / len(answers), 3))

        for mode, fields in (("per_sequence_seeds", per_seq), ("engine_seed", engine)):
            # ignore_eos: every sequence decodes the full budget, so both modes do the same work.
            params = [SamplingParams(**f, ignore_eos=True) for f in fields]
            start = time.perf_counter()
            outs = backend.llm.generate(inputs, params, lora_request=backend.lora_request, use_tqdm=False)
            seconds = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
            rep.figure(f"throughput_{mode}_tokens_per_s", round(tokens / seconds))
            rep.figure(f"throughput_{mode}_s", round(seconds, 1))
            rep.check(f"throughput_{mode}_all_tokens", tokens == sequences * sizes.throughput_tokens, str(tokens))
    finally:
        backend.close()


# --------------------------------------------------------------------------------------------- stages


def step_stages(work: Path, sizes: Sizes, rep: Report) -> None:
    adapter = adapter_dir(work)
    # Two engines start one after the other (generate, then evaluate): leave room for the first's teardown.
    os.environ.setdefault("CONSISTENCY_VLLM_GPU_MEMORY_UTILIZATION", "0.45")
    backend = "auto"
    if not rep.use_cuda:
        rep.skip("vLLM backend for the stages (hf instead)", "no CUDA")
        backend = "hf"
    elif not has("vllm"):
        rep.skip("vLLM backend for the stages (hf instead)", "vllm not installed")
    items = problems(sizes.stage_problems)
    problems_path = write_problems(work / "problems.jsonl", items)
    common = {"problemsUri": str(problems_path), "adapterUri": str(adapter),
              "sampling": {"samples": sizes.stage_samples, "temperature": 0.7, "maxNewTokens": sizes.stage_tokens}}
    start = time.perf_counter()
    generated = run_stage(stage_config("generate", work, "generate", {**common, "shards": 1,
                                                                      "tensorParallelSize": 1}, backend=backend),
                          work / "scratch" / "generate")
    rep.figure("generate_s", round(time.perf_counter() - start, 1))
    rep.figure("generate_metrics", generated.metrics)
    rep.check("generate_completions", generated.metrics["completions"] == len(items) * (1 + sizes.stage_samples))
    start = time.perf_counter()
    evaluated = run_stage(stage_config("evaluate", work, "evaluate", common, backend=backend),
                          work / "scratch" / "evaluate")
    rep.figure("evaluate_s", round(time.perf_counter() - start, 1))
    rep.figure("evaluate_metrics", evaluated.metrics)
    rep.check("evaluate_problems", evaluated.metrics["problems"] == len(items))


# ------------------------------------------------------------------------------------------ expansion


def step_expansion(work: Path, sizes: Sizes, rep: Report) -> None:
    adapter = adapter_dir(work)
    four_bit = rep.use_cuda and has("bitsandbytes")
    if not rep.use_cuda:
        rep.skip("4-bit NF4 base", "no CUDA")
    elif not four_bit:
        rep.skip("4-bit NF4 base", "bitsandbytes not installed")
    items = problems(sizes.expansion_steps * sizes.batch_size, offset=500)
    data = write_train_data(work / "expansion.jsonl", items)
    params = train_params(data, sizes, quantization="nf4" if four_bit else "none", epochs=1, learning_rate=1e-4,
                          initAdapterUri=str(adapter))
    start = time.perf_counter()
    result = run_stage(stage_config("train", work, "expansion", params), work / "scratch" / "expansion")
    rep.figure("expansion_s", round(time.perf_counter() - start, 1))
    rep.figure("expansion_metrics", result.metrics)
    rep.check("expansion_steps", result.metrics["steps"] == sizes.expansion_steps)
    rep.check("expansion_quantization", result.metrics["quantization"] == ("nf4" if four_bit else "none"))


# -------------------------------------------------------------------------------------------- sandbox


def sandbox_program(i: int) -> str:
    """A quick program that must pass (tens of milliseconds of work at most): any timeout is false."""
    return (f"def f(n):\n    return sum(k * k for k in range(n))\n\n"
            f"assert f({1000 + i % 500}) == {sum(k * k for k in range(1000 + i % 500))}\n")


def step_sandbox(work: Path, sizes: Sizes, rep: Report) -> None:
    from consistency_worker.sandbox.pool import default_sandbox, default_workers

    rep.figure("cpus_visible", len(os.sched_getaffinity(0)))
    sandbox = default_sandbox()
    workers = default_workers()
    rep.figure("isolation", sandbox.isolation.describe())
    rep.figure("workers", workers)
    sources = [sandbox_program(i) for i in range(sizes.sandbox_programs)]
    try:
        start = time.perf_counter()
        results = sandbox.run_many(sources, workers=workers, timeout_s=10.0)
        seconds = time.perf_counter() - start
    finally:
        sandbox.close()
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    rep.figure("programs", len(results))
    rep.figure("programs_per_s", round(len(results) / seconds, 1))
    rep.figure("statuses", statuses)
    rep.figure("false_timeouts", statuses.get("timeout", 0))
    rep.check("all_passed", sum(r.passed for r in results) == len(sources), str(statuses))


# --------------------------------------------------------------------------------------------- driver

STEP_FUNCS: dict[str, Callable[[Path, Sizes, Report], None]] = {
    "env": step_env, "model": step_model, "qlora": step_qlora, "vllm": step_vllm, "stages": step_stages,
    "expansion": step_expansion, "sandbox": step_sandbox,
}


# Steps that import the project's packages (pydantic models, stages); env and model need only torch.
NEEDS_PROJECT = {"qlora", "vllm", "stages", "expansion", "sandbox"}


def run_step(step: str, work: Path, *, cpu: bool) -> int:
    import torch

    use_cuda = torch.cuda.is_available() and not cpu
    if not use_cuda:
        # Small CPU runs: one torch thread per process keeps a shared 2-core machine responsive.
        torch.set_num_threads(max(1, min(2, len(os.sched_getaffinity(0)))))
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = CPU if (cpu or not use_cuda) else FULL
    rep = Report(step, use_cuda=use_cuda)
    print(f"== {step}{' (cpu sizes)' if sizes is CPU else ''}", flush=True)
    start = time.perf_counter()
    status, error = "ok", None
    try:
        if step in NEEDS_PROJECT and not has("pydantic"):
            raise RuntimeError("pydantic is not installed (the project's spec needs it): put its wheels in a "
                               "folder and name it in GPU_CHECK_WHEELS")
        STEP_FUNCS[step](work, sizes, rep)
        if rep.skipped and not rep.figures:
            status = "skipped"
    except Skip as exc:
        status = "skipped"
        rep.skip(step, str(exc))
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    if status == "ok" and not all(rep.checks.values()):
        status = "failed"
        error = "check(s) failed: " + ", ".join(k for k, v in rep.checks.items() if not v)
    result = {"step": step, "status": status, "figures": rep.figures, "checks": rep.checks,
              "skipped": rep.skipped, "error": error, "seconds": round(time.perf_counter() - start, 1),
              "cuda": use_cuda}
    (work / f"{step}.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"== {step}: {status} in {result['seconds']} s{' - ' + error if error else ''}", flush=True)
    return 1 if status == "failed" else 0


def report(work: Path, out: Path, timeouts: dict[str, str]) -> int:
    merged: dict[str, Any] = {"steps": {}}
    for step in STEPS:
        path = work / f"{step}.json"
        if path.is_file():
            merged["steps"][step] = read_json(path)
        else:
            why = f"timed out after {timeouts[step]} s" if step in timeouts else "did not run or crashed"
            merged["steps"][step] = {"step": step, "status": "failed", "error": why, "figures": {}}
    failed = [s for s, r in merged["steps"].items() if r["status"] == "failed"]
    merged["ok"] = not failed
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2, default=str))
    print("\n== gpu check summary")
    for step, r in merged["steps"].items():
        extra = r.get("error") or "; ".join(r.get("skipped", [])) or ""
        print(f"  {step:<10} {r['status']:<8} {r.get('seconds', '-')!s:>6} s  {extra}")
    print(f"figures: {out}")
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) == 1:
        # `make bench` runs every bench/*.py without arguments: run the whole check through its driver.
        os.execvp("bash", ["bash", str(REPO / "bench" / "gpu_check.sh")])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=[*STEPS, "report"])
    parser.add_argument("--work", type=Path, required=True, help="directory shared by the steps")
    parser.add_argument("--cpu", action="store_true", help="small sizes; skip CUDA-only parts")
    parser.add_argument("--out", type=Path, help="report: where to write the merged JSON")
    parser.add_argument("--timed-out", action="append", default=[], metavar="STEP=SECONDS",
                        help="report: a step the driver killed at its timeout")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step == "report":
        timeouts = dict(item.split("=", 1) for item in args.timed_out)
        return report(args.work, args.out or args.work / "gpu_check.json", timeouts)
    return run_step(args.step, args.work, cpu=args.cpu)


if __name__ == "__main__":
    sys.exit(main())
