"""lm-evaluation-harness against `blockllm serve`: the tool researchers use to score a served
model, run unchanged (`local-completions`, the server's own tokenizer through vLLM's
/tokenize routes) on tasks the project ships as local files, beside the project's own
evaluation of the same models on the same examples.

Tasks, from blockllm.evaluation.tasks (held-out seed): `sentiment` as multiple choice (the
answer of highest log-likelihood: echo + logprobs, prompt logprobs), `arith` and `reverse` as
generate_until (greedy to a newline, the first number / word read leniently). The project's
side: evaluate.choice_score and task_score on the reference chain (blockllm.models.chain),
not the server.

    python -m experiments.lm_eval_check [--models a,b] [--n 50] [--out results/lm_eval]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

GENERATE = {"arith": r"(-?\d+)", "reverse": r"([A-Za-z]+)"}  # task: what the filter reads
CHOICE = ("sentiment",)


def write_tasks(folder: Path, tok, n: int) -> list[str]:
    """One jsonl of held-out examples and one task config per task; the task names."""
    from blockllm.evaluation.tasks import EVAL_SEED, TASKS
    names = []
    for task in (*CHOICE, *GENERATE):
        t = TASKS[task]
        data = folder / f"{task}.jsonl"
        rows = []
        for prompt, answer in t.examples(n, EVAL_SEED):
            row = {"prompt": prompt, "answer": t.extract(answer)}
            if task in CHOICE:
                row["label"] = t.choices.index(answer)
            rows.append(json.dumps(row))
        data.write_text("\n".join(rows) + "\n")
        cfg = {"task": f"blockllm_{task}", "dataset_path": "json",
               "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
               "doc_to_text": "prompt"}
        if task in CHOICE:
            cfg.update(output_type="multiple_choice", doc_to_choice=list(t.choices),
                       doc_to_target="label", target_delimiter="",
                       metric_list=[{"metric": "acc"}])
        else:
            budget = max(len(tok.encode(a + "\n")) for _, a in t.examples(n, EVAL_SEED)) + 2
            cfg.update(output_type="generate_until", doc_to_target="answer",
                       generation_kwargs={"until": ["\n"], "max_gen_toks": budget,
                                          "do_sample": False, "temperature": 0},
                       filter_list=[{"name": "lenient", "filter": [
                           {"function": "regex", "regex_pattern": GENERATE[task]},
                           {"function": "take_first"}]}],
                       metric_list=[{"metric": "exact_match"}])
        (folder / f"{task}.yaml").write_text(json.dumps(cfg, indent=1))  # JSON is YAML
        names.append(cfg["task"])
    return names


def run_lm_eval(url: str, model: str, tasks: list[str], include: Path, out: Path) -> dict:
    """`lm-eval run` against the server; {task: score 0..100}."""
    python = os.environ.get("BLOCKLLM_LM_EVAL_PYTHON", sys.executable)  # where lm-eval lives
    args = [python, "-m", "lm_eval", "run", "--model", "local-completions",
            "--model_args", f"model={model},base_url={url}/v1/completions,"
            "tokenizer_backend=remote,num_concurrent=4,max_retries=1,tokenized_requests=True",
            "--tasks", ",".join(tasks), "--include_path", str(include), "--batch_size", "8",
            "--output_path", str(out), "--seed", "0"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise click.ClickException(f"lm-eval failed for {model}:\n{p.stderr[-3000:]}")
    [result] = sorted(out.rglob("results_*.json"))[-1:]
    scores = json.loads(result.read_text())["results"]
    return {name.removeprefix("blockllm_"): 100.0 * next(
        v for k, v in r.items() if k.split(",")[0] in ("acc", "exact_match")
        and "stderr" not in k) for name, r in scores.items()}


def option_of(zoo, model: str, label: str):
    from blockllm.zoo.evidence import load_options
    return next(o for o in load_options(zoo, model) if o.label == label)


def own_scores(zoo, model: str, n: int, label: str | None = None) -> dict:
    """The project's evaluation of `model`'s chain (its recorded option `label` if given)."""
    from blockllm.evaluation.evaluate import choice_score, task_score
    from blockllm.zoo.ingest import chain_model, entries_model
    chain = entries_model(zoo, model, option_of(zoo, model, label).chain) if label else \
        chain_model(zoo, model)
    tok = zoo.tokenizer(model)
    return {**{t: choice_score(chain, tok, t, n) for t in CHOICE},
            **{t: task_score(chain, tok, t, n) for t in GENERATE}}


def check(zoo_root: str, models: list[str], n: int, pins: dict | None = None) -> list[dict]:
    """Rows: model, chain (exact, or the recorded option a pin serves), task, kind, lm-eval's
    score, the project's, the difference in points; for a pinned option on its model's own
    task, the score the zoo recorded for it too."""
    pins = pins or {}
    from blockllm.zoo.store import Zoo
    from experiments.server_proc import server_process
    zoo = Zoo(zoo_root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tasks = write_tasks(Path(tmp), zoo.tokenizer(models[0]), n)
        argv = ["-m", "blockllm.cli", "serve", "--zoo", zoo_root, "--models", ",".join(models)]
        for m, label in pins.items():
            argv += ["--pin-chain", f"{m}={label}"]
        with server_process(argv, timeout_s=300) as (url, _):
            for m in models:
                theirs = run_lm_eval(url, m, tasks, Path(tmp), Path(tmp) / "out" / m)
                ours = own_scores(zoo, m, n, pins.get(m))
                own_task = (zoo.model(m).meta or {}).get("task")
                for task, score in theirs.items():
                    row = {"model": m, "chain": pins.get(m, "exact"), "task": task,
                           "kind": "multiple_choice" if task in CHOICE else "generate_until",
                           "n": n, "lm_eval": score, "own": ours[task],
                           "diff_points": score - ours[task]}
                    if m in pins and task == own_task:
                        row["recorded"] = option_of(zoo, m, pins[m]).score
                    rows.append(row)
                click.echo(f"{m}: " + ", ".join(f"{r['task']} {r['lm_eval']:.0f} (own "
                                                f"{r['own']:.0f})" for r in rows[-len(theirs):]))
    return rows


def write(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=1))
    lines = ["# lm-evaluation-harness against `blockllm serve` "
             "(`python -m experiments.lm_eval_check`)\n",
             "| model | chain | task | kind | lm-eval score | own evaluation | difference "
             "(points) | zoo recorded |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        recorded = f"{r['recorded']:.1f}" if "recorded" in r else ""
        lines.append(f"| {r['model']} | {r.get('chain', 'exact')} | {r['task']} | {r['kind']} "
                     f"| {r['lm_eval']:.1f} | {r['own']:.1f} | {r['diff_points']:+.1f} | "
                     f"{recorded} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


@click.command()
@click.option("--zoo", "zoo_root", default=None, help="default: the default zoo")
@click.option("--models", default=None, help="default: every model in the zoo")
@click.option("--n", default=50, show_default=True, help="held-out examples per task")
@click.option("--pin", "pins", multiple=True, metavar="MODEL=LABEL",
              help="Also serve MODEL's recorded chain option LABEL and score it (repeatable).")
@click.option("--out", default="results/lm_eval", show_default=True)
def main(zoo_root, models, n, pins, out):
    from blockllm.zoo.store import Zoo
    zoo = Zoo(zoo_root) if zoo_root else Zoo()
    names = models.split(",") if models else zoo.models()
    rows = check(str(zoo.root), names, n)
    pinned = dict(p.split("=", 1) for p in pins)
    if pinned:  # a second server: the pinned models on their options
        rows += check(str(zoo.root), list(pinned), n, pinned)
    write(rows, Path(out))
    worst = max(abs(r["diff_points"]) for r in rows)
    click.echo(f"wrote {out}.json and {out}.md; largest difference {worst:.1f} points")


if __name__ == "__main__":
    main()
