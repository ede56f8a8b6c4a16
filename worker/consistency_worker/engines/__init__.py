"""The model-side machinery the stages drive: resolving and loading checkpoints and adapters
(`model_loading`), generation backends (`backends`: Hugging Face and vLLM), greedy + k sampled answers
per problem, graded, in resumable chunks (`answering`), the fine-tuning loop (`training`, with its
resumable checkpoints in `checkpoints`), the consistency-preference objective (`preference`) and
data-parallel training under torchrun (`distributed`). Everything heavy (torch, transformers, peft,
vllm) is imported lazily inside functions."""
