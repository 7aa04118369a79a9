"""Is the E8 layer power-limited on the H200? SM clock and power (nvidia-smi, 50 ms samples) while the dense
bf16 matmul and the E8 unfused layer (fwd+bwd) each run for ~4 s; per-iteration times of both. JSON lines."""
import json
import subprocess
import time

import torch

import moe_routing_bench as mrb


def sampled(fn, seconds):
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
                            "--format=csv,noheader,nounits", "-lms", "50"], stdout=subprocess.PIPE, text=True)
    times, t_end = [], time.time() + seconds
    while time.time() < t_end:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        times.append((s, e))
        if len(times) % 20 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    smi.terminate()
    rows = [list(map(float, ln.split(","))) for ln in smi.stdout.read().strip().splitlines() if ln.count(",") == 2]
    ms = sorted(s.elapsed_time(e) for s, e in times)
    clk = sorted(r[0] for r in rows)
    pw = sorted(r[1] for r in rows)
    return {"iters": len(ms), "median_ms": ms[len(ms) // 2], "p10_ms": ms[len(ms) // 10], "p90_ms": ms[9 * len(ms) // 10],
            "sm_clock_MHz_median": clk[len(clk) // 2], "sm_clock_min": clk[0], "power_W_median": pw[len(pw) // 2],
            "power_W_max": pw[-1], "samples": len(rows)}


n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
r = sampled(lambda: torch.mm(a, b, out=c), 4.0)
r["tflops"] = 2 * n ** 3 / (r["median_ms"] * 1e-3) / 1e12
print(json.dumps({"what": "dense 8192^3 bf16", **r}), flush=True)
print(json.dumps({"what": "mrb.matmul_flops", "tflops": mrb.matmul_flops("cuda") / 1e12}), flush=True)

T, H, F, E, K = 16384, 2048, 8192, 8, 2
torch.manual_seed(0)
with torch.device("cuda"):
    lay = mrb.MoELayer(mrb.MoEConfig(H, F, E, K, strategy="softk", backend="triton", capacity_factor=None))
lay.to(torch.bfloat16)
g = torch.Generator(device="cuda").manual_seed(1)
x = torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
go = torch.randn(T, H, device="cuda", generator=g).to(torch.bfloat16)
tok = torch.arange(T, device="cuda")


def fwd_bwd():
    lay.zero_grad(set_to_none=True)
    x.grad = None
    out, aux = lay(x, tok)
    torch.autograd.backward([out, aux.balance_loss], [go, torch.ones_like(aux.balance_loss)])


for _ in range(3):
    fwd_bwd()
torch.cuda.synchronize()
r = sampled(fwd_bwd, 4.0)
r["tflops"] = 3 * 2 * 2 * T * K * H * F / (r["median_ms"] * 1e-3) / 1e12
print(json.dumps({"what": "E8 unfused layer fwd+bwd", **r}), flush=True)
print(json.dumps({"what": "mrb.matmul_flops after", "tflops": mrb.matmul_flops("cuda") / 1e12}), flush=True)
