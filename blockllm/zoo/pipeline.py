"""`zoo equivalence`: evidence for every model, measured chain options, and a results table."""

from __future__ import annotations

from tqdm import tqdm

from blockllm.zoo.calibration import calibration_set
from blockllm.zoo.equivalence import evaluate_model
from blockllm.zoo.evidence import budget, save_evidence
from blockllm.zoo.stitch import measure_stitch
from blockllm.zoo.store import Zoo, ZooError
from blockllm.zoo.substitution import THRESHOLDS, measure_options


def run_equivalence(zoo: Zoo, models: list[str] | None = None, thresholds=THRESHOLDS,
                    n_eval: int = 50, stitches: list[tuple[str, str, int]] = (),
                    progress: bool = True) -> dict:
    """Compute and store evidence and options; return rows for results/equivalence.json."""
    names = models or zoo.models()
    for n in names:
        zoo.model(n)  # unknown names fail before any work
    calib = {}
    for name in tqdm(names, desc="equivalence evidence", disable=not progress):
        calib[name] = calibration_set(zoo.tokenizer(name))
        save_evidence(zoo, evaluate_model(zoo, name, calib[name], progress), calib[name].hash)
    rows = []
    for name in tqdm(names, desc="end-to-end chains", disable=not progress):
        meta = zoo.model(name).meta
        exact = tuple(zoo.chain(name))
        for o in measure_options(zoo, name, calib[name].hash, n_eval, thresholds, progress):
            rows.append({
                "model": name, "kind": meta.get("kind", "base"), "task": meta.get("task"),
                "label": o.label, "threshold": o.threshold, "score": o.score,
                "perplexity": o.perplexity, "drop_points": o.drop_points,
                "saved_bytes": o.saved_bytes, "budget": budget(zoo, name),
                "within_budget": o.drop_points <= budget(zoo, name),
                "substituted": sum(a != b for a, b in zip(o.chain, exact)),
                "calib_hash": calib[name].hash, "n_eval": n_eval})
    stitch_rows = []
    for model, donor, cut in stitches:
        if model not in calib:
            raise ZooError(f"--stitch {model}: include it in --models")
        stitch_rows.append(measure_stitch(zoo, model, donor, cut, calib[model], n_eval))
    return {"rows": rows, "stitch": stitch_rows}
