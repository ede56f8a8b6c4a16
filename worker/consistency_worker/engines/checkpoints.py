"""Training checkpoints in the artifact store: adapter (or, for full fine-tuning, every weight) plus the
trainer state (optimizer, scheduler, RNG, step) under `<output>/checkpoints/step-NNNNNN/`, with
`latest.json` written last as the commit marker, so a rerun resumes only from a complete checkpoint."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consistency_core.stage_wire import join_uri

from consistency_worker.store.facade import Store

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
STATE_FILE = "trainer_state.pt"
FULL_WEIGHTS = "model.safetensors"


def rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class CheckpointStore:
    """Checkpoints under `<output>/checkpoints/step-NNNNNN/`, with `latest.json` written last as the
    commit marker: a checkpoint is used only once it is complete."""

    store: Store
    root: str
    scratch: Path
    keep: int = 2

    def latest(self) -> dict[str, Any] | None:
        uri = join_uri(self.root, LATEST)
        return self.store.read_json(uri) if self.store.is_file(uri) else None

    def save(self, model: Any, state: dict[str, Any], fingerprint: dict[str, Any], processes: int = 1) -> str:
        import torch

        step = state["step"]
        local = self.scratch / f"ckpt-{step:06d}"
        shutil.rmtree(local, ignore_errors=True)
        if hasattr(model, "peft_config"):
            model.save_pretrained(str(local))
        else:  # full fine-tuning: every weight (safetensors' save_model copes with tied embeddings)
            from safetensors.torch import save_model

            local.mkdir(parents=True, exist_ok=True)
            save_model(model, str(local / FULL_WEIGHTS))
        torch.save(state, local / STATE_FILE)
        uri = join_uri(self.root, f"step-{step:06d}")
        self.store.upload_dir(local, uri)
        self.store.write_json(join_uri(self.root, LATEST),
                              {"step": step, "uri": uri, "fingerprint": fingerprint, "processes": processes})
        shutil.rmtree(local, ignore_errors=True)
        self._prune(keep_uri=uri)
        return uri

    def _prune(self, keep_uri: str) -> None:
        dirs = sorted({c[len(self.root.rstrip("/")) + 1 :].split("/", 1)[0] for c in self.store.list(self.root)})
        steps = [d for d in dirs if d.startswith("step-")]
        for old in steps[: max(0, len(steps) - self.keep)]:
            uri = join_uri(self.root, old)
            if uri != keep_uri:
                self.store.delete(uri, recursive=True)

    def load(self, model: Any, pointer: dict[str, Any]) -> dict[str, Any]:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        local = self.scratch / f"resume-{pointer['step']:06d}"
        self.store.download_dir(pointer["uri"], local)
        if (local / FULL_WEIGHTS).is_file():
            from safetensors.torch import load_model

            missing, unexpected = load_model(model, str(local / FULL_WEIGHTS), strict=False)
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {pointer['uri']} does not match the model: "
                                   f"{(missing + unexpected)[:3]}")
        else:
            weights = load_file(str(local / "adapter_model.safetensors"))
            result = set_peft_model_state_dict(model, weights)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise RuntimeError(f"checkpoint {pointer['uri']} does not match the model: {unexpected[:3]}")
        return torch.load(local / STATE_FILE, weights_only=False, map_location="cpu")
