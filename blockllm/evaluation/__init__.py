"""Task data and scoring: the project's own task generators (no hub data), task scores and
held-out perplexity of any chain. Below the zoo, which measures chains with it."""
