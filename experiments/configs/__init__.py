"""One config per paper figure. Each module has SCALES (toy | cpu-small | gpu-full) and run()."""

CONFIGS = ("latency_vs_rate", "footprint")
SERVING = ("latency_vs_rate",)  # configs that start servers and replay traces
