"""Baselines blockllm is measured against: transformers generate() (the reference), per-model serving."""
