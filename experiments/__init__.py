"""Seeded workloads, the benchmark harness and one config per paper figure.

Not built yet: the harness, workloads and `make reproduce` arrive with the serving engine
(issues 5 and 6). What exists today: `blockllm zoo make-variants` (the fine-tuned variants every
experiment serves) and the decode micro-benchmark in benchmarks/.
"""
