"""Baselines blockllm is measured against: transformers generate() (the reference) and
per-model serving."""
