"""blockllm: serve many fine-tuned LLMs through shared blocks (BlockLLM, arXiv 2404.18322)."""

__version__ = "0.1.0"
