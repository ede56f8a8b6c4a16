"""Locating and loading the base model, its tokenizer and LoRA adapters.

Model URIs (ModelRef.uri): `hf://org/name` (Hugging Face Hub id, optional revision), `s3://bucket/prefix`
(downloaded once into a local cache), `file:///path` or a plain path. A GGUF checkpoint is named by
`ModelRef.gguf_file` inside that location, or by a URI that ends in `.gguf`; transformers dequantises it.
Heavy libraries are imported inside functions so the operator never needs them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consistency_core.spec import ModelRef

from consistency_worker.runtime.pod_limits import usable_cpus

if TYPE_CHECKING:
    from consistency_worker.store.facade import Store

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """The model or adapter cannot be found or loaded (a permanent, configuration-level error)."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where from_pretrained finds the model: a local directory or a Hub id, plus an optional GGUF file."""

    location: str
    gguf_file: str | None = None
    revision: str | None = None
    is_local: bool = True
    dtype: str = "auto"
    max_model_len: int = 4096

    @property
    def gguf_path(self) -> str | None:
        """Full path of the GGUF file (local models only), as vLLM wants it."""
        if self.gguf_file is None or not self.is_local:
            return None
        return str(Path(self.location) / self.gguf_file)

    def describe(self) -> str:
        where = self.location + (f" ({self.gguf_file})" if self.gguf_file else "")
        return where + (f" @ {self.revision}" if self.revision else "")


def _cache_key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def resolve_model(ref: ModelRef, store: Store | None = None, cache_dir: Path | None = None) -> ResolvedModel:
    """Turn a ModelRef into something from_pretrained / vLLM can open, downloading from S3 if needed."""
    uri, gguf = ref.uri, ref.gguf_file
    common: dict[str, Any] = {"dtype": ref.dtype, "max_model_len": ref.max_model_len}
    if uri.startswith("hf://"):
        repo = uri.removeprefix("hf://").strip("/")
        if repo.count("/") != 1:
            raise ModelError(f"model.uri {uri!r}: expected hf://org/name")
        return ResolvedModel(repo, gguf, ref.revision, is_local=False, **common)
    if uri.startswith("s3://"):
        if store is None or cache_dir is None:
            raise ModelError(f"model.uri {uri!r}: an S3 model needs a store and a cache directory")
        if uri.endswith(".gguf"):
            uri, gguf = uri.rsplit("/", 1)
        local = Path(cache_dir) / "models" / _cache_key(uri)
        marker = local / ".complete"
        if not marker.exists():
            log.info("downloading model %s to %s", uri, local)
            store.download_dir(uri, local)
            marker.touch()
        return ResolvedModel(str(local), gguf, None, **common)
    if "://" in uri and not uri.startswith("file://"):
        raise ModelError(f"model.uri {uri!r}: unsupported scheme (use hf://, s3://, file:// or a path)")
    path = Path(uri.removeprefix("file://"))
    if path.suffix == ".gguf":
        path, gguf = path.parent, path.name
    if not path.is_dir():
        raise ModelError(f"model.uri {uri!r}: no such directory {path}")
    if gguf is not None and not (path / gguf).is_file():
        raise ModelError(f"model.ggufFile {gguf!r}: not found in {path}")
    if gguf is None and not (path / "config.json").is_file():
        raise ModelError(f"model.uri {uri!r}: {path} has no config.json (and no ggufFile was given)")
    return ResolvedModel(str(path), gguf, None, **common)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


_BNB_4BIT: dict[str, str | None] = {}


def bnb_4bit_unsupported(device: str) -> str | None:
    """None when bitsandbytes runs NF4 4-bit layers (double quantisation) on `device`, else why not.

    A real probe, not a version table: quantise and dequantise a small block on the device, since
    bitsandbytes' CPU support depends on its build and version (CPU kernels since 0.48)."""
    kind = device.split(":", 1)[0]
    if kind not in _BNB_4BIT:
        _BNB_4BIT[kind] = _probe_bnb_4bit(device)
    return _BNB_4BIT[kind]


def _probe_bnb_4bit(device: str) -> str | None:
    try:
        import bitsandbytes.functional as bnb_functional
        import torch
    except Exception as exc:  # ImportError, or a build that fails to load its native library
        return f"bitsandbytes is not usable ({type(exc).__name__}: {exc})"
    try:
        weight = torch.linspace(-1, 1, 4096, dtype=torch.bfloat16, device=device).reshape(64, 64)
        packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        restored = bnb_functional.dequantize_4bit(packed, state, quant_type="nf4")
    except Exception as exc:
        return f"bitsandbytes cannot run 4-bit NF4 on {device} ({type(exc).__name__}: {exc})"
    if float((restored.float() - weight.float()).abs().max()) > 0.2:
        return f"bitsandbytes' NF4 round trip on {device} is wrong"
    return None


def configure_cpu_threads() -> int:
    """Match torch's intra-op threads to the CPUs this pod may use. torch sizes its pool from the host's
    cores, ignoring a container's CPU quota and affinity; the oversubscribed threads then spin against
    the quota and can make CPU training tens of times slower. OMP_NUM_THREADS, when set, wins (the CLI
    sets it from the same helper before torch starts, unless the user did)."""
    import torch

    wanted = int(os.environ.get("OMP_NUM_THREADS") or 0) or usable_cpus()
    if wanted < torch.get_num_threads():
        torch.set_num_threads(wanted)
        log.info("torch CPU threads set to %d (pod CPU limit)", wanted)
    return torch.get_num_threads()


def torch_dtype(name: str, device: str) -> Any:
    """`auto`: bf16 on GPUs that support it (else fp16), fp32 on CPU (fp16 matmuls are slow/unsupported)."""
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _hub_kwargs(model: ResolvedModel) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if model.gguf_file:
        kwargs["gguf_file"] = model.gguf_file
    if model.revision:
        kwargs["revision"] = model.revision
    return kwargs


# Converting a GGUF checkpoint (tokenizer and dequantised weights) takes tens of seconds. Stages that run
# in one process (tests, notebooks) can share one conversion and get private copies of it. The tokenizer is
# always kept (it is small); the weights only when `keep_gguf_weights` is set, since a stage process loads
# its model once and a spare dequantised copy would double its memory.
_GGUF_CACHE: dict[tuple[str, ...], Any] = {}
keep_gguf_weights = False


def load_tokenizer(model: ResolvedModel) -> Any:
    """The model's tokenizer, set up for batched decoder-only generation (left padding, a pad token)."""
    key = ("tokenizer", model.location, model.gguf_file or "", model.revision or "")
    if model.gguf_file and key in _GGUF_CACHE:
        return copy.deepcopy(_GGUF_CACHE[key])
    tokenizer = _load_tokenizer(model)
    if model.gguf_file:
        _GGUF_CACHE[key] = copy.deepcopy(tokenizer)
    return tokenizer


def _load_tokenizer(model: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.location, **_hub_kwargs(model))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {model.describe()}: {exc}") from exc
    if tokenizer.pad_token is None:
        # Padding positions are masked out, so reusing EOS as padding changes no result.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not getattr(tokenizer, "chat_template", None):
        log.warning("the tokenizer of %s has no chat template: prompts use a plain Question/Answer layout",
                    model.describe())
    return tokenizer


def load_model(
    model: ResolvedModel,
    *,
    device: str,
    quantize_4bit: bool = False,
    dtype: str | None = None,
) -> Any:
    """AutoModelForCausalLM on `device`; with quantize_4bit, NF4 + double quantisation + bf16 compute."""
    import torch
    from transformers import AutoModelForCausalLM

    if quantize_4bit and model.gguf_file:
        return _load_gguf_4bit(model, device)
    kwargs = _hub_kwargs(model)
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": torch.device(device)}
    else:
        kwargs["dtype"] = torch_dtype(dtype or model.dtype, device)
    if device == "cpu":
        configure_cpu_threads()
    key = ("model", model.location, model.gguf_file or "", model.revision or "", str(kwargs["dtype"]))
    cacheable = keep_gguf_weights and bool(model.gguf_file) and not quantize_4bit
    if cacheable and key in _GGUF_CACHE:
        return copy.deepcopy(_GGUF_CACHE[key]).to(device)
    if not _has_dtype_kwarg():
        kwargs["torch_dtype"] = kwargs.pop("dtype")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(model.location, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {model.describe()}: {exc}") from exc
    if cacheable:
        _GGUF_CACHE[key] = copy.deepcopy(loaded)
    if not quantize_4bit:
        loaded.to(device)
    return loaded


def _load_gguf_4bit(model: ResolvedModel, device: str) -> Any:
    """transformers cannot quantise while it reads a GGUF file: dequantise it (as for LoRA), write that as
    a safetensors checkpoint in a temporary directory, and load the checkpoint in 4-bit."""
    import tempfile

    from safetensors.torch import save_model

    dense = load_model(model, device="cpu")
    with tempfile.TemporaryDirectory(prefix="gguf-dense-") as tmp:
        # save_pretrained refuses a GGUF-loaded model; its weights and config are ordinary once dequantised.
        config = dense.config.to_dict()
        config.pop("quantization_config", None)
        Path(tmp, "config.json").write_text(json.dumps(config))
        save_model(dense, str(Path(tmp) / "model.safetensors"))
        del dense
        checkpoint = ResolvedModel(tmp, None, None, is_local=True, dtype=model.dtype,
                                   max_model_len=model.max_model_len)
        return load_model(checkpoint, device=device, quantize_4bit=True)


def _has_dtype_kwarg() -> bool:
    """transformers renamed from_pretrained's `torch_dtype` to `dtype` in 4.56; the worker supports both."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return (major, minor) >= (4, 56)


def is_full_model(trained_dir: Path) -> bool:
    """A full fine-tuning output (weights + config + tokenizer) rather than a LoRA adapter."""
    trained_dir = Path(trained_dir)
    return (trained_dir / "config.json").is_file() and not (trained_dir / "adapter_config.json").is_file()


def with_trained(model: ResolvedModel, trained_dir: Path | None) -> tuple[ResolvedModel, Path | None]:
    """(model, adapter) to load for a train stage's output: a LoRA adapter goes on the base model; a full
    fine-tuning output replaces the base model (it is a complete checkpoint with its tokenizer)."""
    if trained_dir is None or not is_full_model(trained_dir):
        return model, trained_dir
    full = ResolvedModel(str(trained_dir), None, None, is_local=True, dtype=model.dtype,
                         max_model_len=model.max_model_len)
    return full, None


def adapter_rank(adapter_dir: Path) -> int:
    """LoRA rank from a peft adapter directory (vLLM must be told the largest rank up front)."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise ModelError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
    config = json.loads(config_path.read_text())
    return int(config.get("r", 8))


def fetch_adapter(adapter_uri: str, store: Store, cache_dir: Path) -> Path:
    """A local copy of the adapter directory at `adapter_uri` (a store URI: s3://, file:// or a path); a full
    fine-tuning output (see `with_trained`) is fetched the same way."""
    from consistency_worker.store.errors import StoreNotFound

    local = Path(cache_dir) / "adapters" / _cache_key(adapter_uri)
    if (local / ".complete").exists():
        return local
    try:
        store.download_dir(adapter_uri, local)
    except StoreNotFound as exc:
        raise ModelError(f"adapter {adapter_uri!r} not found in the store") from exc
    if not is_full_model(local):
        adapter_rank(local)  # validates that it is an adapter (or a full model) before anything loads it
    (local / ".complete").touch()
    return local
