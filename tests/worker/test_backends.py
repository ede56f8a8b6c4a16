"""Model resolution and the generation backends, on a tiny real Llama checkpoint (hf) and, for vLLM,
on the engine arguments (the engine itself runs in test_gpu.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_core.spec import Backend, ModelRef
from consistency_testkit.fixtures import PROBLEMS, single_torch_thread, tiny_model_dir
from consistency_worker.data.prompts import PLAIN_STOP_STRINGS, render_prompt, stop_strings
from consistency_worker.engines.backends import (
    Generated,
    GenerationRequest,
    cut_at_stop,
    encode_prompt,
    open_backend,
    select_backend,
)
from consistency_worker.engines.backends.hf import HFBackend
from consistency_worker.engines.backends.vllm import (
    build_batch,
    collect,
    engine_kwargs,
    eos_token_ids,
    lora_rank_limit,
    sampling_fields,
)
from consistency_worker.engines.model_loading import ModelError, ResolvedModel, adapter_rank, resolve_model
from consistency_worker.runtime.seeds import derive_seed
from consistency_worker.store.facade import open_store

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    model = resolve_model(ModelRef(uri=str(tiny_model_dir())))
    return HFBackend(model, max_batch_rows=16)


def prompts_for(backend: HFBackend) -> list[str]:
    return [render_prompt(backend.tokenizer, p) for p in PROBLEMS]


# ------------------------------------------------------------------------------------ resolution


def test_resolve_local_dir_gguf_path_and_errors(tmp_path: Path) -> None:
    model_dir = tiny_model_dir()
    resolved = resolve_model(ModelRef(uri=f"file://{model_dir}"))
    assert resolved.location == str(model_dir) and resolved.gguf_file is None and resolved.is_local

    gguf = tmp_path / "m" / "weights.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    by_file = resolve_model(ModelRef(uri=str(gguf)))
    assert (by_file.location, by_file.gguf_file) == (str(gguf.parent), "weights.Q4.gguf")
    assert by_file.gguf_path == str(gguf)

    with pytest.raises(ModelError, match="no such directory"):
        resolve_model(ModelRef(uri=str(tmp_path / "absent")))
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(ModelRef(uri=str(gguf.parent)))
    with pytest.raises(ModelError, match=r"ggufFile 'other\.gguf'"):
        resolve_model(ModelRef(uri=str(gguf.parent), gguf_file="other.gguf"))
    with pytest.raises(ModelError, match="unsupported scheme"):
        resolve_model(ModelRef(uri="gs://bucket/model"))

    hub = resolve_model(ModelRef(uri="hf://HuggingFaceTB/SmolLM2-135M-Instruct", revision="main"))
    assert (hub.location, hub.revision, hub.is_local) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "main", False)
    with pytest.raises(ModelError, match="hf://org/name"):
        resolve_model(ModelRef(uri="hf://just-a-name"))


def test_resolve_s3_model_downloads_once_and_loads(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    uri = f"{s3_bucket}/models/tiny"
    store.upload_dir(tiny_model_dir(), uri)
    resolved = resolve_model(ModelRef(uri=uri), store, tmp_path)
    assert (Path(resolved.location) / "config.json").is_file()
    backend = HFBackend(resolved)
    out = backend.generate(["<|im_start|>user\nhi<|im_end|>\n"], n=1, temperature=0.0, max_new_tokens=4, seeds=[1])
    assert len(out) == 1 and len(out[0]) == 1
    # A second resolution reuses the completed download instead of fetching again.
    (Path(resolved.location) / "config.json").write_text(json.dumps({"marker": True}))
    again = resolve_model(ModelRef(uri=uri), store, tmp_path)
    assert json.loads((Path(again.location) / "config.json").read_text()) == {"marker": True}
    with pytest.raises(ModelError, match="needs a store"):
        resolve_model(ModelRef(uri=uri))


# ------------------------------------------------------------------------------------ selection


def test_select_backend_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert select_backend(Backend.auto) == "hf"
    assert select_backend("hf") == "hf"
    with pytest.raises(ModelError, match="vllm"):
        select_backend(Backend.vllm)
    with pytest.raises(ValueError):
        select_backend("tgi")


def test_open_backend_auto_gives_hf_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    backend = open_backend("auto", resolve_model(ModelRef(uri=str(tiny_model_dir()))), max_batch_rows=3)
    assert backend.name == "hf" and backend.max_batch_rows == 3


def test_derive_seed_is_stable_and_spread() -> None:
    assert derive_seed("problem", 1, "m1") == derive_seed("problem", 1, "m1")
    seeds = {derive_seed("problem", 1, f"p{i}") for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**31 for s in seeds)


def test_encode_prompt_adds_no_second_bos(backend: HFBackend) -> None:
    tok = backend.tokenizer
    text = render_prompt(tok, PROBLEMS[0])
    ids = encode_prompt(tok, text)
    assert tok.decode(ids) == text  # byte-level: lossless, no specials added or dropped
    with_bos = _FakeBosTokenizer(tok)
    bos_id = tok.convert_tokens_to_ids("<|im_start|>")
    # A template that writes BOS itself (SmolLM2's ChatML uses <|im_start|> as BOS) gets no second one...
    assert encode_prompt(with_bos, "<|im_start|>user\nx").count(bos_id) == 1
    # ...and a prompt without it gets the tokenizer's usual BOS.
    assert encode_prompt(with_bos, "user: x")[0] == bos_id


class _FakeBosTokenizer:
    """The tiny tokenizer, but claiming <|im_start|> as its BOS (as SmolLM2's does) and adding it."""

    def __init__(self, inner: object):
        self.inner = inner
        self.bos_token = "<|im_start|>"
        self.eos_token = "<|im_end|>"
        self.eos_token_id = inner.eos_token_id  # type: ignore[attr-defined]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.inner(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        bos = self.inner.convert_tokens_to_ids(self.bos_token)  # type: ignore[attr-defined]
        return {"input_ids": ([bos] if add_special_tokens else []) + ids}


# ----------------------------------------------------------------------------------- hf generation


def test_hf_shapes_greedy_and_determinism(backend: HFBackend) -> None:
    prompts = prompts_for(backend)
    seeds = [derive_seed("t", i) for i in range(len(prompts))]
    greedy = backend.generate(prompts, n=2, temperature=0.0, max_new_tokens=12, seeds=seeds)
    assert [len(g) for g in greedy] == [2] * len(prompts)
    assert all(g[0] == g[1] for g in greedy)
    first = backend.generate(prompts, n=3, temperature=1.0, max_new_tokens=12, seeds=seeds)
    second = backend.generate(prompts, n=3, temperature=1.0, max_new_tokens=12, seeds=seeds)
    assert first == second
    assert [len(s) for s in first] == [3] * len(prompts)
    # Sampling at T=1 from a random model: the k samples of a prompt differ from each other.
    assert all(len(set(samples)) > 1 for samples in first)
    other = backend.generate(prompts, n=3, temperature=1.0, max_new_tokens=12, seeds=[s + 1 for s in seeds])
    assert other != first


def test_hf_samples_do_not_depend_on_batching(backend: HFBackend) -> None:
    prompts = prompts_for(backend)
    seeds = [derive_seed("b", i) for i in range(len(prompts))]
    batched = backend.generate(prompts, n=3, temperature=0.8, max_new_tokens=10, seeds=seeds)
    backend.max_batch_rows = 1
    try:
        one_by_one = backend.generate(prompts, n=3, temperature=0.8, max_new_tokens=10, seeds=seeds)
        alone = backend.generate(prompts[2:3], n=3, temperature=0.8, max_new_tokens=10, seeds=seeds[2:3])
    finally:
        backend.max_batch_rows = 16
    assert batched == one_by_one
    assert alone[0] == batched[2]


def test_hf_shared_prefill_loop_matches_transformers_generate(backend: HFBackend) -> None:
    """The backend's own loop (one prefill per prompt, finished rows dropped) samples exactly what
    transformers' generate() gives with the same Gumbel noise, sampled and greedy, with rows finishing early."""
    assert backend.cache_kwarg is not None  # the tiny Llama takes the shared-prefill loop
    prompts = prompts_for(backend)
    seeds = [derive_seed("g", i) for i in range(len(prompts))]
    # Every token id of the random model's vocabulary stops a row with some probability: make one id EOS.
    eos, own_loop = backend.eos_ids, backend.cache_kwarg
    backend.eos_ids = sorted({*eos, 7, 11, 13})
    try:
        own = [backend.generate(prompts, n=4, temperature=t, max_new_tokens=14, seeds=seeds) for t in (1.5, 0.0)]
        backend.cache_kwarg = None
        reference = [backend.generate(prompts, n=4, temperature=t, max_new_tokens=14, seeds=seeds) for t in (1.5, 0.0)]
    finally:
        backend.eos_ids = eos
        backend.cache_kwarg = own_loop
    assert own == reference
    lengths = {len(backend.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in own[0][0] + own[0][1]}
    assert len(lengths) > 1  # some rows stopped before others


def test_hf_low_temperature_approaches_greedy(backend: HFBackend) -> None:
    prompts = prompts_for(backend)[:2]
    greedy = backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=10, seeds=[1, 2])
    cold = backend.generate(prompts, n=2, temperature=1e-4, max_new_tokens=10, seeds=[1, 2])
    assert all(s == g[0] for g, samples in zip(greedy, cold, strict=True) for s in samples)


def test_hf_rejects_mismatched_seeds(backend: HFBackend) -> None:
    with pytest.raises(ValueError, match="seeds"):
        backend.generate(["a", "b"], n=1, temperature=0.0, max_new_tokens=2, seeds=[1])


def test_hf_mixed_requests_match_separate_calls_and_flag_the_budget(backend: HFBackend) -> None:
    prompts = prompts_for(backend)
    seeds = [derive_seed("mix", i) for i in range(len(prompts))]
    requests = [GenerationRequest(p, 1, 0.0, 6, s) for p, s in zip(prompts, seeds, strict=True)]
    requests += [GenerationRequest(p, 3, 0.9, 6, s) for p, s in zip(prompts, seeds, strict=True)]
    mixed = backend.generate_requests(requests)
    greedy = backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=6, seeds=seeds)
    sampled = backend.generate(prompts, n=3, temperature=0.9, max_new_tokens=6, seeds=seeds)
    assert [[g.text for g in done] for done in mixed] == greedy + sampled
    # A random model almost never says <|im_end|> within 6 tokens: every answer used the whole budget.
    assert all(g.hit_limit for done in mixed for g in done)
    roomy = backend.generate_requests([GenerationRequest(prompts[0], 1, 0.0, 6, 1)])
    assert roomy[0][0].hit_limit


def _stop_candidate(text: str) -> int | None:
    """Where a 3-character stop string can start: printable ASCII (one byte token each), first seen there,
    after a few characters and free of newlines (transformers also matches across the prompt's end, which
    ends in one; vLLM does not)."""
    for k in range(3, len(text) - 3):
        piece = text[k : k + 3]
        if text.find(piece) == k and all(" " <= c <= "~" for c in piece):
            return k
    return None


def test_hf_stop_string_cuts_the_answer_and_clears_the_budget_flag(backend: HFBackend) -> None:
    prompt = prompts_for(backend)[0]
    for seed in range(50):  # the first seeded continuation that runs the whole budget and has a candidate
        request = GenerationRequest(prompt, 1, 1.0, 24, seed)
        free = backend.generate_requests([request])[0][0]
        start = _stop_candidate(free.text)
        if free.hit_limit and start is not None:
            break
    else:
        pytest.fail("no seeded continuation to take a stop string from")
    stop = free.text[start : start + 3]
    saved = backend.stop
    backend.stop = (stop,)
    try:
        stopped = backend.generate_requests([request])[0][0]
    finally:
        backend.stop = saved
    assert stopped == Generated(text=free.text[:start], hit_limit=False)


def test_hf_plain_layout_gets_the_plain_stop_strings(tmp_path: Path) -> None:
    from consistency_testkit.tinymodel import build_tokenizer

    model_dir = tmp_path / "plain"
    shutil.copytree(tiny_model_dir(), model_dir)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(model_dir)
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    plain = HFBackend(resolve_model(ModelRef(uri=str(model_dir))))
    assert not getattr(plain.tokenizer, "chat_template", None)
    assert plain.stop == PLAIN_STOP_STRINGS
    assert render_prompt(plain.tokenizer, PROBLEMS[0]).endswith("Answer:")


def test_hf_applies_a_lora_adapter(tmp_path: Path) -> None:
    from consistency_core.spec import LoraConfig
    from consistency_worker.engines.model_loading import load_model
    from consistency_worker.engines.training import wrap_lora

    resolved = resolve_model(ModelRef(uri=str(tiny_model_dir())))
    peft_model = wrap_lora(load_model(resolved, device="cpu"), LoraConfig(r=8, alpha=16), init_adapter_dir=None)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero (a no-op adapter); make it change the outputs
                param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    assert adapter_rank(tmp_path / "adapter") == 8
    plain = HFBackend(resolved)
    adapted = HFBackend(resolved, adapter_dir=tmp_path / "adapter")
    prompts = prompts_for(plain)
    args = {"n": 1, "temperature": 0.0, "max_new_tokens": 8, "seeds": [1] * len(prompts)}
    assert plain.generate(prompts, **args) != adapted.generate(prompts, **args)


# ---------------------------------------------------------------------------------- vLLM arguments


def test_vllm_engine_kwargs(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    model = ResolvedModel(str(tiny_model_dir()), dtype="bfloat16", max_model_len=2048)
    kwargs = engine_kwargs(model, adapter_dir=adapter, tensor_parallel_size=2, seed=5)
    assert kwargs["model"] == str(tiny_model_dir())
    assert kwargs["enable_prefix_caching"] is True
    assert (kwargs["tensor_parallel_size"], kwargs["seed"], kwargs["dtype"]) == (2, 5, "bfloat16")
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == 16 and kwargs["max_loras"] == 1
    assert kwargs["max_model_len"] == 2048
    # The default 4096 is capped at the checkpoint's 2048 positions instead of failing vLLM's check.
    assert engine_kwargs(ResolvedModel(str(tiny_model_dir()), max_model_len=4096), adapter_dir=None,
                         tensor_parallel_size=1, seed=0)["max_model_len"] == 2048
    plain = engine_kwargs(model, adapter_dir=None, tensor_parallel_size=1, seed=0)
    assert "enable_lora" not in plain and "tokenizer" not in plain

    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "m.gguf").write_bytes(b"GGUF")
    gguf = engine_kwargs(ResolvedModel(str(gguf_dir), gguf_file="m.gguf"), adapter_dir=None,
                         tensor_parallel_size=1, seed=0)
    assert gguf["model"] == str(gguf_dir / "m.gguf") and gguf["tokenizer"] == str(gguf_dir / "m.gguf")
    shutil.copy(tiny_model_dir() / "tokenizer_config.json", gguf_dir)
    gguf = engine_kwargs(ResolvedModel(str(gguf_dir), gguf_file="m.gguf"), adapter_dir=None,
                         tensor_parallel_size=1, seed=0)
    assert gguf["tokenizer"] == str(gguf_dir)


def test_lora_rank_limit() -> None:
    assert [lora_rank_limit(r) for r in (1, 8, 9, 16, 64, 65, 512)] == [8, 8, 16, 16, 64, 128, 512]
    with pytest.raises(ValueError):
        lora_rank_limit(1024)


def test_stop_strings_only_without_a_chat_template(backend: HFBackend) -> None:
    assert stop_strings(backend.tokenizer) == ()

    class NoTemplate:
        chat_template = None

    assert stop_strings(NoTemplate()) == PLAIN_STOP_STRINGS
    assert cut_at_stop("a\nQuestion: b\nQuestion: c", ["\nQuestion:", "b"]) == ("a", True)
    assert cut_at_stop("no stop here", PLAIN_STOP_STRINGS) == ("no stop here", False)


def test_vllm_sampling_fields_per_request() -> None:
    greedy = GenerationRequest("p", 1, 0.0, 64, seed=7)
    sampled = GenerationRequest("p", 5, 0.7, 64, seed=7)
    assert sampling_fields(greedy, stop=(), seeding="perSequence") == {
        "n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "skip_special_tokens": True}
    assert sampling_fields(sampled, stop=["\nQuestion:"], seeding="perSequence") == {
        "n": 5, "temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "skip_special_tokens": True,
        "stop": ["\nQuestion:"], "seed": 7}
    # Engine seeding: no request seed, so vLLM samples the batch from its one engine generator.
    assert "seed" not in sampling_fields(sampled, stop=(), seeding="engine")
    # A greedy request asked for n copies still decodes once.
    assert sampling_fields(GenerationRequest("p", 4, 0.0, 8, 1), stop=(), seeding="perSequence")["n"] == 1
    with pytest.raises(ValueError, match="seeding"):
        sampling_fields(sampled, stop=(), seeding="perRow")
    with pytest.raises(ValueError, match="n >= 1"):
        sampling_fields(GenerationRequest("p", 0, 0.7, 8, 1), stop=(), seeding="engine")


def test_vllm_batch_interleaves_greedy_and_sampled_and_encodes_each_prompt_once() -> None:
    encoded: list[str] = []

    def encode(text: str) -> list[int]:
        encoded.append(text)
        return [ord(c) for c in text]

    requests = [GenerationRequest("ab", 1, 0.0, 16, 11), GenerationRequest("ab", 3, 0.8, 16, 11),
                GenerationRequest("c", 1, 0.0, 16, 12), GenerationRequest("c", 3, 0.8, 16, 12)]
    inputs, fields = build_batch(requests, encode, stop=(), seeding="perSequence")
    assert inputs == [{"prompt_token_ids": [97, 98]}] * 2 + [{"prompt_token_ids": [99]}] * 2
    assert encoded == ["ab", "c"]
    assert [(f["n"], f["temperature"], f.get("seed")) for f in fields] == [
        (1, 0.0, None), (3, 0.8, 11), (1, 0.0, None), (3, 0.8, 12)]


def test_vllm_collect_orders_samples_flags_length_and_repeats_greedy() -> None:
    requests = [GenerationRequest("a", 3, 0.0, 8, 1), GenerationRequest("a", 2, 0.8, 8, 1)]
    outputs = [[(0, "g", "stop")], [(1, "s1", "length"), (0, "s0", "stop")]]
    assert collect(requests, outputs) == [
        [Generated("g", False)] * 3, [Generated("s0", False), Generated("s1", True)]]
    with pytest.raises(RuntimeError, match="2 completions"):
        collect(requests[:1], [[(0, "g", "stop"), (1, "h", "stop")]])
    with pytest.raises(RuntimeError, match="1 outputs for 2"):
        collect(requests, outputs[:1])


def test_vllm_stops_at_every_eos_id_of_the_checkpoint(tmp_path: Path, backend: HFBackend) -> None:
    model_dir = tmp_path / "two-eos"
    shutil.copytree(tiny_model_dir(), model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "eos_token_id": 9}))
    ids = eos_token_ids(ResolvedModel(str(model_dir)), backend.tokenizer)
    assert ids == sorted({backend.tokenizer.eos_token_id, 2, 7, 9})
    fields = sampling_fields(GenerationRequest("p", 2, 0.5, 8, 1), stop=(), seeding="engine", stop_token_ids=ids)
    assert fields["stop_token_ids"] == ids
    assert "stop_token_ids" not in sampling_fields(GenerationRequest("p", 2, 0.5, 8, 1), stop=(), seeding="engine")
