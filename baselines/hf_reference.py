"""transformers' LlamaForCausalLM on the same weights as a blockllm model: the reference.

Parity tests and benchmarks build the reference from the very tensors our loaders produced,
so any difference is in the model code, not in loading.
"""

from __future__ import annotations

import torch

from blockllm.loaders.source import ModelSource


def hf_model(src: ModelSource, dtype: torch.dtype = torch.float32, device: str = "cpu",
             merge_adapter: bool = False):
    """A transformers LlamaForCausalLM holding `src.tensors` (eval mode, sdpa attention).

    With `merge_adapter`, `src.adapter` is applied through peft and merged, as peft users do.
    """
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    hf_cfg = HFConfig(**src.config.to_hf())
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_cfg)
    state = {k: v.clone() for k, v in src.tensors.items()}  # training/merging must not alias src
    if src.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb.__init__(hf_cfg)  # buffers were created on meta
    model = model.to(device=device, dtype=dtype).eval()
    if merge_adapter and src.adapter is not None:
        model = _merged_peft(model, src)
    eos = src.config.eos_token_ids
    model.generation_config.pad_token_id = eos[0] if eos else 0
    return model


def _merged_peft(model, src: ModelSource):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    a = src.adapter
    modules = sorted({k.split(".")[-2] for k in a.tensors})
    cfg = LoraConfig(r=a.rank, lora_alpha=a.scaling * a.rank, target_modules=modules,
                     lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    state = {f"base_model.model.{k}.weight": v for k, v in a.tensors.items()}
    set_peft_model_state_dict(peft_model, state)
    return peft_model.merge_and_unload().eval()


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers generate(), greedy, no early stop: the new token ids."""
    ids = torch.tensor([prompt_ids], device=model.device)
    # eos_token_id=[]: never stop early (min_new_tokens would instead mask EOS out of argmax)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=[])
    return out[0, len(prompt_ids):].tolist()
