"""Fine-tuned variants of a base model, made locally and deterministically, for experiments."""
