"""Where the GPU time of one FFN training step goes: torch.profiler tables, dense vs ours.

Builds the dense and MoE FFNs of ``moe_ffn.py`` (same weights), runs a few warm-up steps,
then profiles ``--steps`` forward+backward steps of each and prints the wall time and the
kernel time per step and the operators/kernels sorted by their own device time (CPU time
on a machine without CUDA).  A diagnosis aid, not a benchmark: the profiler adds overhead.

    python benchmarks/profile_ffn.py --dims 512x2048 --frames 262144 --experts 8
"""
import argparse
import os
import sys
import time

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moe_ffn import build, training_step  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="512x2048", help="d x h")
    parser.add_argument("--frames", type=int, default=262144)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=40, help="rows of each table")
    args = parser.parse_args(argv)
    d, h = (int(v) for v in args.dims.split("x"))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    x = torch.randn(1, args.frames, d, device=device, requires_grad=True)
    grad = torch.randn(1, args.frames, d, device=device)
    moe = build("moe", d, h, args.experts, nn.SiLU, None).to(device)
    modules = {"dense": build("dense", d, h, args.experts, nn.SiLU, moe).to(device), "moe": moe}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(f"# profile_ffn: {torch.cuda.get_device_name() if cuda else 'CPU'} | d={d} h={h} "
          f"S={args.frames} E={args.experts} | {'bf16 autocast' if cuda else 'fp32'}")
    autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=cuda)  # noqa: E731
    for name, module in modules.items():
        step = training_step(module, x, grad, autocast)
        for _ in range(3):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        wall = (time.perf_counter() - start) / args.steps
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            sync()
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        kernel_ms = sum(e.device_time for e in kernels) / args.steps / 1e3
        print(f"\n## {name}: wall {wall * 1e3:.2f} ms per step; kernel time {kernel_ms:.2f} ms and "
              f"{len(kernels) / args.steps:.0f} kernels per step (sums over {args.steps} steps below)")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=90))


if __name__ == "__main__":
    main()
