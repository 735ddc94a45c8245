"""`make demo` on a machine with an empty zoo (what a fresh clone has): it adds the embedded
SmolLM2 and two untrained copies that share 26 of its 30 layers, serves them, and prints its
table and block calls per token."""

import subprocess
import sys


def test_demo_runs_from_an_empty_zoo(tmp_path):
    env = {"BLOCKLLM_ZOO": str(tmp_path / "zoo"), "BLOCKLLM_CACHE": str(tmp_path / "cache")}
    import os
    p = subprocess.run([sys.executable, "-m", "experiments.demo", "--requests", "6",
                        "--max-tokens", "4", "--out", str(tmp_path / "fig")],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = p.stdout
    assert "added the embedded SmolLM2" in out and "untrained" in out
    for name in ("smollm2", "smollm2-untrained-top4-1", "smollm2-untrained-top4-2"):
        assert name in out
    assert "block calls per generated token" in out and (tmp_path / "fig" / "demo.png").exists()
    from blockllm.zoo.store import Zoo
    zoo = Zoo(tmp_path / "cache" / "demo-zoo")
    base, copy = zoo.chain("smollm2"), zoo.chain("smollm2-untrained-top4-1")
    shared = sum(a.block == b.block for a, b in zip(base, copy))
    assert shared == len(base) - 4, "all but the top 4 layers are the base's own blocks"
