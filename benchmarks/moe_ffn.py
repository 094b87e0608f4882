"""Forward+backward time and peak memory of one MoE FFN against the dense FFN.

Variants, all with the same width ``d``, expert/FFN hidden size ``h`` and activation, and
(for the MoE variants) the same router weights and expert weights, so the same routing:

  dense   ESPnet's ``PositionwiseFeedForward``: ``Linear(d, h) -> act -> Linear(h, d)``
  moe     ours: ``MoEFeedForward`` (top-1, dropless, sort dispatch)
  loop    the common peer pattern: one ``nn.Module`` FFN per expert and a Python loop with
          boolean masks, ``for e: m = idx == e; out[m] = gate[m, None] * ffn_e(x[m])``
  gshard  GShard-style one-hot einsum dispatch, capacity factor 1.25: dispatch and combine
          tensors ``[S, E, C]``, ``C = ceil(1.25 S / E)``; over-capacity frames get 0
  matmuls the expert matmuls of ``moe``'s routing alone, nothing else: a lower bound for
          any top-1 MoE that computes in this dtype (see ``ExpertMatmuls``)
  moe_gmm (opt-in, ``--variants``) ours with ``Experts.impl = "grouped_mm"`` forced

Grid (defaults = full grid): ``--experts 4,8,16 --frames 2048,8192,32768
--dims 256x1024,512x2048``.  CPU runs fp32; CUDA runs bf16 autocast (router in fp32).
Times: median of ``--repeats`` interleaved rounds after ``--warmup`` rounds (see
``_bench.py``).  Peak memory: extra tensor memory of one step (see ``_bench.py``).
Cases that would take too long or too much memory are listed as ``skipped (reason)``.

    python benchmarks/moe_ffn.py --out benchmarks/results/moe_ffn.json
"""
import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from _report import cell_faults, cell_mem, cell_time, table, write_json  # noqa: E402

from espnet.nets.pytorch_backend.conformer.swish import Swish  # noqa: E402
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (  # noqa: E402
    PositionwiseFeedForward,
)

from espnet_omnirouter.moe import Experts, MoEFeedForward, Router  # noqa: E402
from espnet_omnirouter.moe.experts import compute_dtype  # noqa: E402

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "espnet_swish": Swish}
ALL_VARIANTS = ("dense", "moe", "loop", "gshard", "matmuls", "moe_gmm")
DEFAULT_VARIANTS = ("dense", "moe", "loop", "gshard", "matmuls")
NOT_COMPARED = ("dense", "moe", "matmuls")  # variants whose output is not checked against moe's
COMPILED_VARIANTS = ("dense", "moe", "moe_gmm")  # with --compile


class LoopMoE(nn.Module):
    """Per-expert Python loop with boolean masks (one FFN module per expert)."""

    def __init__(self, d, h, num_experts, activation):
        super().__init__()
        self.router = nn.Linear(d, num_experts, bias=False)
        self.experts = nn.ModuleList(
            PositionwiseFeedForward(d, h, 0.0, activation()) for _ in range(num_experts)
        )

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        with torch.autocast(flat.device.type, enabled=False):
            probs = self.router(flat.float()).softmax(dim=-1)
        gate, idx = probs.max(dim=-1)
        out = None
        for e, ffn in enumerate(self.experts):
            m = idx == e
            y = gate[m, None] * ffn(flat[m])
            if out is None:
                out = flat.new_zeros(flat.shape, dtype=y.dtype)
            out[m] = y.to(out.dtype)
        return out.view(x.shape)


class GShardMoE(nn.Module):
    """One-hot einsum dispatch/combine with a fixed expert capacity (GShard)."""

    def __init__(self, d, h, num_experts, activation, capacity_factor=1.25):
        super().__init__()
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(d, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, d, h))
        self.b1 = nn.Parameter(torch.empty(num_experts, h))
        self.w2 = nn.Parameter(torch.empty(num_experts, h, d))
        self.b2 = nn.Parameter(torch.empty(num_experts, d))
        self.activation = activation()

    def capacity(self, num_frames):
        return math.ceil(self.capacity_factor * num_frames / self.num_experts)

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        num_frames, e = flat.shape[0], self.num_experts
        c = self.capacity(num_frames)
        with torch.autocast(flat.device.type, enabled=False):
            probs = self.router(flat.float()).softmax(dim=-1)
            gate, idx = probs.max(dim=-1)
            onehot = nn.functional.one_hot(idx, e).float()  # [S, E]
            position = (onehot.cumsum(0) - 1) * onehot  # slot of each frame in its expert
            keep = onehot * (position < c)  # [S, E]
            slot = nn.functional.one_hot((position * keep).sum(1).long(), c).float()  # [S, C]
            dispatch = keep.unsqueeze(2) * slot.unsqueeze(1)  # [S, E, C]
            combine = gate[:, None, None] * dispatch  # [S, E, C]
        dtype = torch.get_autocast_dtype(flat.device.type) if torch.is_autocast_enabled(
            flat.device.type
        ) else flat.dtype
        expert_in = torch.einsum("sec,sd->ecd", dispatch.to(dtype), flat.to(dtype))
        hidden = self.activation(
            torch.einsum("ecd,edh->ech", expert_in, self.w1.to(dtype)) + self.b1.to(dtype)[:, None]
        )
        expert_out = torch.einsum("ech,ehd->ecd", hidden, self.w2.to(dtype)) + self.b2.to(dtype)[:, None]
        out = torch.einsum("sec,ecd->sd", combine.to(dtype), expert_out)
        return out.view(x.shape)


class ExpertMatmuls(nn.Module):
    """The matmuls that a top-1 MoE FFN step must do, and nothing else.

    Forward ``(x_e @ w1[e]) @ w2[e]`` on consecutive slices ``x_e`` of the input whose sizes
    are the per-expert frame counts of a routing; backward the four matmuls of their
    gradients.  No router, sort, gather, bias, activation, gate or scatter: every top-1
    MoE FFN with these weights and this routing computes at least these six matmuls per
    expert in the same dtype, so its step cannot be faster than this one (up to matmul
    blocking).  The weights are stacked ``[E, ...]`` Parameters, as ours.

    Args:
        ref: an ``MoEFeedForward``; its expert weights are copied.
        sizes: ``[E]`` frames per expert (sum = frames of the input).
        grouped: True where ours uses ``torch._grouped_mm`` (CUDA bf16): two grouped matmuls
            forward and four backward.  False: one matmul per slice, each product written
            straight into its slice of the output or gradient (:class:`_SliceMatmuls`).
    """

    def __init__(self, ref, sizes, grouped=False):
        super().__init__()
        self.grouped = grouped
        self.w1 = nn.Parameter(ref.experts.w1.detach().clone())
        self.w2 = nn.Parameter(ref.experts.w2.detach().clone())
        self.sizes = [int(n) for n in sizes]
        # grouped_mm's offsets, made once (moved with the module): no copy to the device per step
        self.register_buffer("offs", torch.tensor(self.sizes).cumsum(0).to(torch.int32), persistent=False)

    def forward(self, x):
        """``[..., d]`` -> ``[..., d]`` (frames taken as already sorted by expert)."""
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] != sum(self.sizes):
            raise ValueError(f"ExpertMatmuls: {flat.shape[0]} frames, routing sizes sum to {sum(self.sizes)}")
        dtype = compute_dtype(flat)
        flat, w1, w2 = flat.to(dtype), self.w1.to(dtype), self.w2.to(dtype)
        if self.grouped:
            y = torch._grouped_mm(torch._grouped_mm(flat, w1, offs=self.offs), w2, offs=self.offs)
        else:
            y = _SliceMatmuls.apply(flat, w1, w2, self.sizes)
        return y.view(x.shape)


class _SliceMatmuls(torch.autograd.Function):
    """``y_e = (x_e @ w1[e]) @ w2[e]`` per slice, every product written in place into its
    slice of ``y`` (forward) or of the gradients (backward): six matmuls per slice and no
    copy (plain autograd would ``cat`` the outputs and ``stack`` the weight gradients)."""

    @staticmethod
    def forward(ctx, x, w1, w2, sizes):
        y = x.new_empty(x.shape[0], w2.shape[2])
        hidden = [torch.mm(x_e, w1[e]) for e, x_e in enumerate(x.split(sizes))]
        for e, (h_e, y_e) in enumerate(zip(hidden, y.split(sizes))):
            torch.mm(h_e, w2[e], out=y_e)
        ctx.save_for_backward(x, w1, w2, *hidden)
        ctx.sizes = sizes
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w1, w2, *hidden = ctx.saved_tensors
        grad_x, grad_w1, grad_w2 = torch.empty_like(x), torch.empty_like(w1), torch.empty_like(w2)
        slices = zip(x.split(ctx.sizes), grad_y.split(ctx.sizes), grad_x.split(ctx.sizes), hidden)
        for e, (x_e, g_e, grad_x_e, h_e) in enumerate(slices):
            torch.mm(h_e.t(), g_e, out=grad_w2[e])
            grad_h = torch.mm(g_e, w2[e].t())
            torch.mm(x_e.t(), grad_h, out=grad_w1[e])
            torch.mm(grad_h, w1[e].t(), out=grad_x_e)
        return grad_x, grad_w1, grad_w2, None


def routing_sizes(moe, x):
    """Frames per expert of ``moe``'s routing of ``x``: ``[E]`` int64."""
    with torch.no_grad():
        frames = x.reshape(-1, x.shape[-1])
        expert = moe.router(frames).expert[:, 0]
    return torch.bincount(expert, minlength=moe.router.num_experts)


def build(variant, d, h, num_experts, act, ref, x=None):
    """The module of ``variant``; MoE variants copy the router/expert weights of ``ref``
    (``matmuls`` also takes its slice sizes from ``ref``'s routing of ``x``)."""
    if variant == "dense":
        return PositionwiseFeedForward(d, h, 0.0, act())
    if variant in ("moe", "moe_gmm"):
        experts = Experts(num_experts, d, h, act(), 0.0)
        if variant == "moe_gmm":
            experts.impl = "grouped_mm"
        layer = MoEFeedForward(Router(d, num_experts, top_k=1), experts, capacity_factor=None)
        if ref is not None:
            layer.load_state_dict(ref.state_dict())
        return layer
    ex = ref.experts
    if variant == "matmuls":
        dtype = torch.bfloat16 if x.is_cuda else x.dtype  # what main computes in (CUDA: bf16 autocast)
        return ExpertMatmuls(ref, routing_sizes(ref, x).tolist(), grouped=ex.use_grouped_mm(x, dtype))
    if variant == "loop":
        m = LoopMoE(d, h, num_experts, act)
        with torch.no_grad():
            m.router.weight.copy_(ref.router.weight)
            for e, ffn in enumerate(m.experts):
                ffn.w_1.weight.copy_(ex.w1[e].t())
                ffn.w_1.bias.copy_(ex.b1[e])
                ffn.w_2.weight.copy_(ex.w2[e].t())
                ffn.w_2.bias.copy_(ex.b2[e])
        return m
    if variant == "gshard":
        m = GShardMoE(d, h, num_experts, act)
        with torch.no_grad():
            m.router.weight.copy_(ref.router.weight)
            for name in ("w1", "b1", "w2", "b2"):
                getattr(m, name).copy_(getattr(ex, name))
        return m
    raise ValueError(variant)


def training_step(module, x, grad, autocast):
    """One forward+backward of ``module`` on ``x`` with output gradient ``grad``, gradients
    reset first (``step.zero()`` resets them alone); ``autocast()`` gives the context."""
    params = list(module.parameters())

    def zero():
        x.grad = None
        for p in params:
            p.grad = None

    def step():
        zero()
        with autocast():
            y = module(x)
        y.backward(grad.to(y.dtype))

    step.zero = zero
    return step


def gshard_bytes(frames, num_experts):
    c = math.ceil(1.25 * frames / num_experts)
    return frames * num_experts * c * 4  # one float32 [S, E, C] tensor


def parse_list(text, cast=int):
    return [cast(v) for v in text.split(",") if v]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", default="4,8,16")
    parser.add_argument("--frames", default="2048,8192,32768")
    parser.add_argument("--dims", default="256x1024,512x2048", help="d x h pairs")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {ALL_VARIANTS}")
    parser.add_argument("--activation", default="silu", choices=sorted(ACTIVATIONS))
    _bench.add_common_args(parser)
    parser.add_argument(
        "--gshard-max-gib", type=float, default=1.0,
        help="skip gshard where one [S, E, C] float32 tensor exceeds this (GiB)",
    )
    parser.add_argument(
        "--case-budget-s", type=float, default=25.0,
        help="fewer timed rounds (but at least 3) where --repeats rounds would take longer (0: no cut)",
    )
    parser.add_argument(
        "--max-step-s", type=float, default=20.0,
        help="drop a variant from a case when its first (warm-up) step takes longer (0: no limit)",
    )
    parser.add_argument(
        "--page-faults", action="store_true",
        help="also record minor page faults per step of each variant (ru_minflt, median of 3 steps)",
    )
    parser.add_argument(
        "--compile", nargs="?", const="default", default=None, metavar="MODE",
        help="time torch.compile'd dense and MoE modules (loop, gshard and matmuls stay eager), with this "
        "compile mode (default, reduce-overhead = CUDA graphs, max-autotune); compiling happens "
        "in the warm-up rounds",
    )
    parser.add_argument(
        "--update", default=None, metavar="JSON",
        help="measure the grid again and merge it into this earlier result (replacing its cases; "
        "variants, activation, threads and rounds are taken from it); written to --out (default: JSON)",
    )
    parser.add_argument(
        "--redo-stalled", type=float, default=None, metavar="PCT",
        help="with --update: the grid is the cases of JSON whose CPU stall while timing exceeded PCT %%",
    )
    args = parser.parse_args(argv)
    previous = None
    if args.update:
        with open(args.update) as f:
            previous = json.load(f)
        old = previous["config"]
        for key in ("variants", "activation", "threads", "warmup", "repeats", "case_budget_s", "seed"):
            setattr(args, key, ",".join(old[key]) if key == "variants" else old[key])
        args.out = args.out or args.update
    elif args.redo_stalled is not None:
        parser.error("--redo-stalled needs --update")
    if args.compile:
        args.max_step_s = 0.0  # the first step compiles: its time says nothing about the variant

    torch.set_num_threads(args.threads)
    device = _bench.pick_device(args.device)
    variants = parse_list(args.variants, str)
    for v in variants:
        if v not in ALL_VARIANTS:
            parser.error(f"unknown variant {v}")
    if "dense" not in variants:
        variants.insert(0, "dense")
    dims = [tuple(int(v) for v in p.split("x")) for p in parse_list(args.dims, str)]
    dtype_name = "bf16 autocast" if device.type == "cuda" else "fp32"
    if args.compile:
        dtype_name += f", torch.compile mode={args.compile} (dense, moe)"
    info = _bench.machine_info(device)
    act = ACTIVATIONS[args.activation]
    print(
        f"# moe_ffn: {info['device_name']} | torch {info['torch']} | threads {torch.get_num_threads()} "
        f"| {dtype_name} | activation {args.activation} | warmup {args.warmup} | "
        f"median of up to {args.repeats} rounds (at least 3; fewer where they would take over "
        f"{args.case_budget_s:g} s)"
    )
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    )

    grid = [(d, h, s, e) for d, h in dims for s in parse_list(args.frames) for e in parse_list(args.experts)]
    if args.redo_stalled is not None:
        grid = [
            (c["d"], c["h"], c["frames"], c["experts"])
            for c in previous["cases"]
            if (c.get("machine_load") or {}).get("stall_pct") is None
            or c["machine_load"]["stall_pct"] > args.redo_stalled
        ]
        print(f"# measuring again {len(grid)} case(s) of {args.update} timed with CPU stall > {args.redo_stalled:g}%")
    cases = []
    t_start = time.time()
    for d, h, frames, num_experts in grid:
            case = dict(d=d, h=h, frames=frames, experts=num_experts, variants={})
            if previous is not None:
                case["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
            cases.append(case)
            torch.manual_seed(args.seed)
            x = torch.randn(1, frames, d, device=device, requires_grad=True)
            grad = torch.randn(1, frames, d, device=device)
            ref = build("moe", d, h, num_experts, act, None).to(device)
            modules, skipped = {}, {}
            for v in variants:
                if v == "gshard" and gshard_bytes(frames, num_experts) > args.gshard_max_gib * 2**30:
                    skipped[v] = (
                        f"skipped ([S,E,C] tensor {gshard_bytes(frames, num_experts) / 2**30:.1f} GiB"
                        f" > --gshard-max-gib {args.gshard_max_gib:g})"
                    )
                    continue
                modules[v] = ref if v == "moe" else build(v, d, h, num_experts, act, ref, x).to(device)

            steps = {
                v: training_step(
                    torch.compile(m, mode=args.compile) if args.compile and v in COMPILED_VARIANTS else m,
                    x, grad, autocast,
                )
                for v, m in modules.items()
            }
            # Sanity: same routing and weights -> same output (gshard: where it kept the frame).
            with torch.no_grad(), autocast():
                y_ref = ref(x).float()
                counts = torch.bincount(ref.last.routing.expert[:, 0], minlength=num_experts)
                case["max_load_frac"] = counts.max().item() / frames
                for v, m in modules.items():
                    if v in NOT_COMPARED:
                        continue
                    y = m(x).float()
                    kept = y.abs().sum(-1) > 0 if v == "gshard" else torch.ones_like(y[..., 0], dtype=torch.bool)
                    err = (y - y_ref)[kept].abs().max().item() if kept.any() else 0.0
                    case["variants"].setdefault(v, {})["max_abs_diff_vs_moe"] = err
            (times, slow), case["machine_load"] = _bench.run_quietly(
                lambda: _bench.time_interleaved(
                    steps, device, args.warmup, args.repeats, args.max_step_s, args.case_budget_s
                ),
                args.quiet_psi, args.quiet_wait_s, args.quiet_retries,
            )
            for v, seconds in slow.items():
                skipped[v] = f"skipped (first step {seconds:.0f} s > --max-step-s {args.max_step_s:g})"
                del steps[v]
            for v, ts in times.items():
                case["variants"].setdefault(v, {}).update(times_s=ts, median_s=_bench.median(ts))
            case["repeats"] = max((len(ts) for ts in times.values()), default=0)
            if not args.no_memory:
                for v, step in steps.items():
                    case["variants"][v]["peak_bytes"] = _bench.peak_memory(step, device)
            if args.page_faults:
                for v, step in steps.items():
                    case["variants"][v]["minor_faults"] = _bench.page_faults(step)
            for v, reason in skipped.items():
                case["variants"][v] = {"skipped": reason}
            print_case(case, variants, memory=not args.no_memory)
            del modules, steps, ref, x, grad
            if device.type == "cuda":
                torch.cuda.empty_cache()
    elapsed = time.time() - t_start
    print(f"# total {elapsed:.0f} s")
    print()
    print(table(cases, variants, memory=not args.no_memory))
    if previous is not None:
        if previous["machine"]["device"] != info["device"]:
            sys.exit(f"--update: {args.update} was measured on {previous['machine']['device']}, not {info['device']}")
        key = lambda c: (c["d"], c["h"], c["frames"], c["experts"])  # noqa: E731
        new = {key(c): c for c in cases}
        merged = [new.pop(key(c), c) for c in previous["cases"]] + list(new.values())
        previous["config"].setdefault("updates", []).append(
            dict(time=info["time"], cases=[list(k) for k in map(key, cases)], elapsed_s=elapsed,
                 redo_stalled=args.redo_stalled, loadavg_at_start=info.get("loadavg_at_start"))
        )
        payload = dict(previous, cases=merged)
        cases = merged
        print("\n# merged:")
        print(table(cases, variants, memory=not args.no_memory))
    else:
        payload = dict(
            benchmark="moe_ffn",
            machine=info,
            config=dict(
                vars(args), dtype=dtype_name, variants=variants, elapsed_s=elapsed,
                memory="CPU: peak of the allocator's running total under torch.profiler(profile_memory=True); "
                "CUDA: max_memory_allocated - memory_allocated before the step",
            ),
            cases=cases,
        )
    if args.out:
        write_json(args.out, payload)
    return cases


def print_case(case, variants, memory):
    parts = [f"d={case['d']} h={case['h']} S={case['frames']} E={case['experts']}:"]
    for v in variants:
        faults = "minor_faults" in case["variants"].get(v, {})
        parts.append(
            f"{v} {cell_time(case, v)}" + (f" / {cell_mem(case, v)}" if memory else "")
            + (f" / {cell_faults(case, v)} page faults" if faults else "")
        )
    print("  ".join(parts), flush=True)


if __name__ == "__main__":
    main()
