"""One config per paper figure. Each module has SCALES (toy | cpu-small | gpu-full) and run()."""

CONFIGS = ("latency_vs_rate",)
