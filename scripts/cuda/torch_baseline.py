"""PyTorch + transformers baseline on the GPU machine, for the anchor in docs/BENCHMARKS.md.

Random weights in the benchmark presets' shapes (Llama-3.1-8B / Llama-3.2-1B hidden,
FFN, layers and heads, a vocabulary of 49,152, untied head), bf16, eager attention
(`sdpa`), `model.generate` with greedy decoding and ignore-EOS. Prints one line per
(shape, batch): output tokens/s of the decode phase (prompt time subtracted), the best of
three runs.
"""
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8,
                         rope_theta=500000.0),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8,
                         rope_theta=500000.0),
}


def build(shape):
    cfg = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=False,
                      torch_dtype=torch.bfloat16, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.eval()
    return m


@torch.inference_mode()
def timed_generate(m, batch, prompt, gen):
    ids = torch.randint(0, 49152, (batch, prompt), device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0, attention_mask=mask)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    m.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    m.generate(ids, max_new_tokens=gen, min_new_tokens=gen, **kw)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    prefill = t1 - t0
    decode = (t2 - t1) - prefill
    return batch * (gen - 1) / decode


def main():
    shapes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["llama-3.1-8b", "llama-3.2-1b"]
    batches = [int(b) for b in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 8, 32, 128]
    prompt, gen = 128, 64
    for shape in shapes:
        m = build(shape)
        timed_generate(m, 1, 16, 4)  # warm-up
        for b in batches:
            try:
                # The best of three runs: eager generate is bound by the host, and one run
                # varied by up to 1.6x between calls (session 11).
                tps = max(timed_generate(m, b, prompt, gen) for _ in range(3))
            except torch.OutOfMemoryError:
                print(json.dumps({"shape": shape, "batch": b, "error": "oom"}), flush=True)
                torch.cuda.empty_cache()
                continue
            print(json.dumps({"engine": "pytorch-eager", "shape": shape, "batch": b,
                              "prompt": prompt, "gen": gen,
                              "decode_tokens_per_s": round(tps, 1)}), flush=True)
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
