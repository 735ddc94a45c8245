"""Fine-tune a base model on a task: partial (top layers), LoRA (peft) or full. Deterministic.

Training runs on transformers' LlamaForCausalLM built from the base's tensors (the reference
implementation, with autograd); the results are saved the way users ship fine-tunes (an HF
directory with safetensors, or a peft adapter directory) and enter the zoo through the same
loaders as any other checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from blockllm.loaders.source import ModelSource
from blockllm.evaluation.tasks import TASKS, TRAIN_SEED


@dataclass(frozen=True)
class Recipe:
    name: str  # the variant's zoo name is f"{base}-{name}"
    task: str  # key of TASKS
    kind: str  # partial | lora | full
    steps: int = 60  # optimizer steps
    lr: float = 1e-4  # AdamW learning rate
    batch_size: int = 16  # examples per step
    top_layers: int = 4  # partial: how many of the top decoder layers are trained
    lora_rank: int = 8  # lora: r (lora_alpha = 2 r)
    seed: int = 0  # torch and data order

    def __post_init__(self):
        if self.kind not in ("partial", "lora", "full"):
            raise ValueError(f"unknown variant kind {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}")


def _batches(tok, recipe: Recipe, pad_id: int):
    """Endless deterministic batches: (input_ids, attention_mask, labels), loss on answers only."""
    task = TASKS[recipe.task]
    rng = random.Random(recipe.seed)
    pool = task.examples(2000, TRAIN_SEED)
    while True:
        rows = []
        for prompt, answer in rng.sample(pool, recipe.batch_size):
            p = tok.encode(prompt)
            a = tok.encode(answer + "\n")
            rows.append((p + a, [-100] * len(p) + a))
        width = max(len(r[0]) for r in rows)
        ids = torch.tensor([r[0] + [pad_id] * (width - len(r[0])) for r in rows])
        labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
        mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
        yield ids, mask, labels


def train(base: ModelSource, recipe: Recipe, out_dir: Path, progress: bool = True) -> list[float]:
    """Train and save to out_dir (HF dir, or peft adapter dir for LoRA). Returns the losses."""
    from baselines.hf_reference import hf_model

    torch.manual_seed(recipe.seed)
    tok = base.load_tokenizer()
    model = hf_model(base)
    model.train()
    n_layers = base.config.num_hidden_layers
    if recipe.kind == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=recipe.lora_rank, lora_alpha=2 * recipe.lora_rank, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    else:
        for name, p in model.named_parameters():
            if recipe.kind == "full":
                p.requires_grad_(True)
            else:
                parts = name.split(".")
                top = parts[:2] == ["model", "layers"] and \
                    int(parts[2]) >= n_layers - recipe.top_layers
                p.requires_grad_(top)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    pad = base.config.eos_token_ids[0] if base.config.eos_token_ids else 0
    batches = _batches(tok, recipe, pad)
    losses = []
    bar = tqdm(range(recipe.steps), desc=f"train {recipe.name}", disable=not progress, leave=False)
    for _ in bar:
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.kind == "lora":
        model.save_pretrained(str(out_dir))  # adapter_config.json + adapter_model.safetensors
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        tok.save_pretrained(str(out_dir))
    return losses
