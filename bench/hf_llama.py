#!/usr/bin/env python3
"""A whole transformers Llama forward (random weights, bf16, no grad) with attention served by
transformers' SDPA ("sdpa": PyTorch's CPU kernels) and by cflash ("cfa": registered through
cflash.integrations.transformers), alternated in one process, medians of --reps. The model's
other layers (projections, MLP, norms) are PyTorch's either way, so the ratio is what a user of
the model sees, attention's share included.

    CFLASH_LIBRARY=build/libcflash.so PYTHONPATH=python python3 bench/hf_llama.py \\
        --seqlen 2048 --layers 4 --threads 2
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # two OpenMP runtimes share the process

import argparse
import copy
import statistics
import time

import torch
import transformers

import cflash
from cflash.integrations import transformers as cft


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--heads-kv", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cflash.set_num_threads(a.threads)
    cft.register()
    cfg = transformers.LlamaConfig(hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                                   num_hidden_layers=a.layers, num_attention_heads=a.heads,
                                   num_key_value_heads=a.heads_kv, vocab_size=32000,
                                   max_position_embeddings=max(4096, a.seqlen))
    torch.manual_seed(0)
    models = {}
    for impl in ("sdpa", "cfa"):
        # a config each: transformers sets the implementation on the config object itself
        m = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation=impl)
        m = m.to(torch.bfloat16).eval()
        assert m.config._attn_implementation == impl, m.config._attn_implementation
        if models:  # the same weights for both
            m.load_state_dict(next(iter(models.values())).state_dict())
        models[impl] = m
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seqlen))
    times = {k: [] for k in models}
    outs = {}
    with torch.no_grad():
        for k, m in models.items():  # warm-up
            outs[k] = m(ids).logits.float()
        for _ in range(a.reps):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(ids)
                times[k].append(time.perf_counter() - t0)
    for k, m in models.items():  # each kept its own implementation
        assert m.config._attn_implementation == k, (k, m.config._attn_implementation)
    diff = float((outs["cfa"] - outs["sdpa"]).abs().max())
    ts, tc = statistics.median(times["sdpa"]), statistics.median(times["cfa"])
    print("# torch %s, transformers %s, %d threads, Llama %d layers hidden %d heads %d/%d, "
          "B%d S%d bf16, forward (no grad), medians of %d" %
          (torch.__version__, transformers.__version__, a.threads, a.layers, a.hidden, a.heads,
           a.heads_kv, a.batch, a.seqlen, a.reps))
    print("sdpa %.1f ms | cfa %.1f ms | cfa / sdpa speedup %.2fx | max |logits diff| %.3g" %
          (ts * 1e3, tc * 1e3, ts / tc, diff))


if __name__ == "__main__":
    main()
