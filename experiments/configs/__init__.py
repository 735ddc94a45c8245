"""One config per paper figure. Each module has SCALES (toy | cpu-small | gpu-full) and
run(scale, out, zoo, models) -> the results files it wrote."""

CONFIGS = ("latency_vs_rate", "footprint", "accuracy", "ablations", "scaling", "burstiness",
           "placement", "sim_validation")
SERVING = ("latency_vs_rate", "ablations", "burstiness")  # replay traces on the given zoo
OWN_MODELS = ("footprint", "scaling", "placement")  # derive their own models; need no zoo
