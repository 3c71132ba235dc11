"""PyTorch anchors for bench/gpu/check.sh, measured on the same GPU in the same call as our kernels.

Prints one JSON object: the dense bf16 matmul rate on the shapes of each grouped GEMM (the same FLOPs as dense
GEMMs: [T*k, d] x [d, 2f] then [T*k, f] x [f, d]), the device-to-device copy bandwidth (bytes read + written),
and a Hugging Face Mixtral sparse MoE block (transformers' own module when it imports, else the same eager
algorithm written out) at T=32 in bf16. Times are medians of CUDA-event timings after warm-up.
"""
import json
import sys

import torch


def median_ms(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def dense_expert_gemm(rows, d, f):
    """TFLOP/s of x[rows, d] @ W1W3[d, 2f] then h[rows, f] @ W2[f, d], bf16 in, fp32 accumulate (cuBLAS)."""
    x = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16)
    w13 = torch.randn(d, 2 * f, device="cuda", dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(f, d, device="cuda", dtype=torch.bfloat16) * 0.02
    h = torch.randn(rows, f, device="cuda", dtype=torch.bfloat16)

    def run():
        torch.matmul(x, w13)
        torch.matmul(h, w2)

    ms = median_ms(run)
    flops = 2.0 * rows * d * 2 * f + 2.0 * rows * f * d
    return {"ms": ms, "tflops": flops / ms / 1e9}


def copy_bandwidth(nbytes=2 << 30):
    a = torch.empty(nbytes // 2, device="cuda", dtype=torch.bfloat16).normal_()
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a))
    return {"ms": ms, "gbps": 2.0 * nbytes / ms / 1e6}


class EagerMixtralBlock(torch.nn.Module):
    """The eager algorithm of transformers' MixtralSparseMoeBlock (router, softmax, top-k, renormalise, a loop
    over experts that index_add their tokens back)."""

    def __init__(self, d, f, E, k):
        super().__init__()
        self.k = k
        self.gate = torch.nn.Linear(d, E, bias=False)
        self.w1 = torch.nn.ModuleList([torch.nn.Linear(d, f, bias=False) for _ in range(E)])
        self.w3 = torch.nn.ModuleList([torch.nn.Linear(d, f, bias=False) for _ in range(E)])
        self.w2 = torch.nn.ModuleList([torch.nn.Linear(f, d, bias=False) for _ in range(E)])

    def forward(self, x):
        logits = self.gate(x)
        w = torch.softmax(logits, dim=-1, dtype=torch.float)
        w, sel = torch.topk(w, self.k, dim=-1)
        w = (w / w.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        mask = torch.nn.functional.one_hot(sel, num_classes=len(self.w1)).permute(2, 1, 0)
        for e in range(len(self.w1)):
            slot, tok = torch.where(mask[e])
            if tok.numel() == 0:
                continue
            xe = x[tok]
            ye = self.w2[e](torch.nn.functional.silu(self.w1[e](xe)) * self.w3[e](xe)) * w[tok, slot, None]
            out.index_add_(0, tok, ye)
        return out


def hf_mixtral_block(T=32, d=4096, f=14336, E=8, k=2):
    kind = "transformers MixtralSparseMoeBlock"
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        cfg = MixtralConfig(hidden_size=d, intermediate_size=f, num_local_experts=E, num_experts_per_tok=k)
        with torch.device("cuda"):
            block = MixtralSparseMoeBlock(cfg).to(torch.bfloat16)
    except Exception as err:  # noqa: BLE001 - any import or API change: use the written-out algorithm
        kind = f"eager Mixtral algorithm (transformers block unavailable: {type(err).__name__})"
        with torch.device("cuda"):
            block = EagerMixtralBlock(d, f, E, k).to(torch.bfloat16)
    x = torch.randn(1, T, d, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ms = median_ms(lambda: block(x), iters=20, warmup=3)
    del block
    torch.cuda.empty_cache()
    return {"ms": ms, "kind": kind, "tokens": T}


def main():
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    out = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "copy": copy_bandwidth(),
        "dense": {
            "mixtral": dense_expert_gemm(4096 * 2, 4096, 14336),
            "olmoe": dense_expert_gemm(4096 * 8, 2048, 1024),
            "square8192": {"tflops": None},
        },
        "hfMixtralBlock": hf_mixtral_block(),
    }
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ a, iters=10)
    out["dense"]["square8192"] = {"ms": ms, "tflops": 2 * 8192**3 / ms / 1e9}
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
