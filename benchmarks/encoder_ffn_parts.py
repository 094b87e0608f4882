"""Where a MoE encoder's extra decoding time goes: its FFNs, in parts, against the dense FFNs.

``encoder_infer.py`` times whole encoders; this script splits the FFNs' share.  For each case
(``BATCHxSECONDS``, as there) every encoder's FFN inputs are recorded in one forward (eval mode,
``torch.inference_mode``, 2 threads by default); then, interleaved in one process (``_bench.py``):

* ``encoder``: the encoder forward, for scale;
* ``ffns``: its FFNs on their recorded inputs, one after the other as the forward runs them (the
  experts' weights stream through the caches as in a forward): ESPnet's ``PositionwiseFeedForward``
  for dense, :class:`MoEFeedForward` (``Experts.impl = "auto"``) for the MoE encoders;
* ``gemms``: only their matmuls, on the same sizes: dense ``x W1 + b1`` and ``h W2 + b2``; MoE the
  path the automatic choice takes (``gemm_kind`` in the JSON): the native path's two C GEMMs on
  its packed weights, or the two ``gemm_batch`` calls (MKL's batched GEMM), over the recorded
  slice sizes, else one ``addmm`` pair per slice;
* ``routers`` (MoE): the routers alone on the FFN inputs.

Per FFN it reports each part, ``rest = ffns - gemms`` (activation, gathers, router, dispatch,
scatter), the MoE FFN's extra time over the dense FFN's, split into GEMMs and rest, and the budget:
how much more a MoE FFN may cost than a dense one for the encoder to stay within ``--target`` times
the dense encoder (``(target - 1) * dense encoder / FFNs``).  Medians of the interleaved rounds.

    python benchmarks/encoder_ffn_parts.py --out benchmarks/results/encoder_ffn_parts.json
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from encoder_infer import parse_case  # noqa: E402
from _report import parts_table, write_json  # noqa: E402
from encoder_step import DEFAULT_CONFIGS, load_encoder  # noqa: E402

from espnet_omnirouter.moe import MoEFeedForward, gemm_batch, native  # noqa: E402


def ffn_modules(encoder):
    """The encoder's FFN modules in execution order (macaron first in each block)."""
    mods = []
    for block in encoder.encoders:
        mods += [m for m in (getattr(block, "feed_forward_macaron", None), block.feed_forward) if m is not None]
    return mods


def record_inputs(encoder, mods, xs, ilens):
    """The ``[B, T, d]`` input of each FFN in one forward of ``encoder``, and each MoE FFN's
    expert slice sizes (None for dense FFNs)."""
    inputs = []
    hooks = [m.register_forward_hook(lambda mod, args, out: inputs.append(args[0].clone())) for m in mods]
    with torch.inference_mode():
        encoder(xs, ilens)
    for h in hooks:
        h.remove()
    sizes = []
    for m in mods:
        if isinstance(m, MoEFeedForward):
            expert = m.last.routing.expert.reshape(-1)
            sizes.append(torch.bincount(expert, minlength=m.router.num_experts).tolist())
        else:
            sizes.append(None)
    return inputs, sizes


def gemm_step(mods, inputs, sizes):
    """A step that runs only the matmuls of the FFNs ``mods`` on inputs of the recorded sizes,
    and what it runs for the MoE FFNs ("native", "gemm_batch" or "addmm per slice"; None: dense)."""
    jobs = []
    kind = None
    for m, x, s in zip(mods, inputs, sizes):
        x = x.reshape(-1, x.shape[-1])
        if s is None:  # ESPnet PositionwiseFeedForward: linear, activation, linear
            w1, b1, w2, b2 = m.w_1.weight.t(), m.w_1.bias, m.w_2.weight.t(), m.w_2.bias
            jobs.append(("dense", x, w1, b1, w2, b2, None))
            continue
        ex = m.experts
        rows = sum(s)
        path = ex.path(x, rows, grad=False)
        kind = path if path in ("native", "gemm_batch") else "addmm per slice"
        a = x.new_empty(rows, x.shape[1]).copy_(x[torch.arange(rows) % x.shape[0]])
        w1, w2 = ex._native_packed() if kind == "native" else (ex.w1.detach(), ex.w2.detach())
        jobs.append((kind, a, w1, ex.b1.detach(), w2, ex.b2.detach(), s))

    def step():
        with torch.inference_mode():
            for kind, a, w1, b1, w2, b2, s in jobs:
                if kind == "dense":
                    torch.addmm(b2, torch.addmm(b1, a, w1), w2)
                elif kind == "native":  # its C GEMMs, bias included, on the packed weights
                    ends = torch.tensor(s, dtype=torch.int32).cumsum(0, dtype=torch.int32)
                    h = b1.new_empty(a.shape[0], b1.shape[1])
                    native.expert_gemm(a, w1, b1, h, ends)
                    native.expert_gemm(h, w2, b2, b2.new_empty(a.shape[0], b2.shape[1]), ends)
                elif kind == "gemm_batch":
                    h = b1.new_empty(a.shape[0], w1.shape[2])
                    gemm_batch.gemm_groups(a, w1, h, s, beta=0.0)
                    gemm_batch.gemm_groups(h, w2, b2.new_empty(a.shape[0], w2.shape[2]), s, beta=0.0)
                else:  # one addmm pair per slice: what the loop and padded paths reduce to
                    start = 0
                    for e, n in enumerate(s):
                        if n:
                            torch.addmm(b2[e], torch.addmm(b1[e], a[start : start + n], w1[e]), w2[e])
                        start += n

    return step, kind


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, path in DEFAULT_CONFIGS.items():
        parser.add_argument(f"--{key}-config", default=path)
    parser.add_argument("--cases", type=parse_case, nargs="+", default=[parse_case(c) for c in ("1x5", "1x10")])
    parser.add_argument("--feat-dim", type=int, default=80)
    parser.add_argument("--target", type=float, default=1.1, help="encoder time ratio the budget is computed for")
    _bench.add_common_args(parser, warmup=3)
    parser.set_defaults(repeats=15, device="cpu", threads=2)
    args = parser.parse_args(argv)
    if args.target <= 1:
        parser.error(f"--target must be > 1, got {args.target}")

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    info = _bench.machine_info(device)
    torch.manual_seed(args.seed)
    encoders = {}
    for key in DEFAULT_CONFIGS:
        _, _, enc = load_encoder(getattr(args, f"{key}_config"), args.feat_dim)
        encoders[key] = enc.eval()
    print(f"# encoder_ffn_parts: {info['device_name']} | torch {info['torch']} | threads {torch.get_num_threads()} "
          f"| fp32 inference_mode | warmup {args.warmup} repeats {args.repeats}")
    t0 = time.time()
    cases = []
    for batch, seconds in args.cases:
        frames = int(round(seconds * 100))
        xs = torch.randn(batch, frames, args.feat_dim)
        ilens = torch.full((batch,), frames, dtype=torch.long)
        steps, meta = {}, {}
        for key, enc in encoders.items():
            mods = ffn_modules(enc)
            inputs, sizes = record_inputs(enc, mods, xs, ilens)

            def forward(enc=enc):
                with torch.inference_mode():
                    enc(xs, ilens)

            def ffns(mods=mods, inputs=inputs):
                with torch.inference_mode():
                    for m, x in zip(mods, inputs):
                        m(x)

            steps[f"{key}/encoder"], steps[f"{key}/ffns"] = forward, ffns
            steps[f"{key}/gemms"], gemm_kind = gemm_step(mods, inputs, sizes)
            if key != "dense":
                def routers(mods=mods, inputs=inputs):
                    with torch.inference_mode():
                        for m, x in zip(mods, inputs):
                            m.router(x.reshape(-1, x.shape[-1]))

                steps[f"{key}/routers"] = routers
            meta[key] = dict(num_ffns=len(mods), gemm_kind=gemm_kind, slice_sizes=[s for s in sizes if s is not None])
        (times, _), load = _bench.run_quietly(
            lambda: _bench.time_interleaved(steps, device, args.warmup, args.repeats),
            args.quiet_psi, args.quiet_wait_s, args.quiet_retries,
        )
        med = {k: _bench.median(v) for k, v in times.items()}
        case = dict(batch=batch, seconds=seconds, machine_load=load, times=times, encoders={})
        for key, m in meta.items():
            n = m["num_ffns"]
            r = dict(m, encoder_s=med[f"{key}/encoder"], ffn_s=med[f"{key}/ffns"] / n, gemm_s=med[f"{key}/gemms"] / n)
            r["rest_s"] = r["ffn_s"] - r["gemm_s"]
            r["router_s"] = med[f"{key}/routers"] / n if f"{key}/routers" in med else None
            case["encoders"][key] = r
        dense = case["encoders"]["dense"]
        case["budget_per_ffn_s"] = (args.target - 1) * dense["encoder_s"] / dense["num_ffns"]
        cases.append(case)
        print("\n".join(parts_table([case], args.target).splitlines()[2:]), flush=True)
    elapsed = time.time() - t0
    print(parts_table(cases, args.target))
    print(f"# total {elapsed:.0f} s")
    if args.out:
        write_json(args.out, dict(
            benchmark="encoder_ffn_parts", machine=info,
            config=dict(vars(args), cases=[list(c) for c in args.cases], elapsed_s=elapsed,
                        configs={k: getattr(args, f"{k}_config") for k in DEFAULT_CONFIGS}),
            cases=cases,
        ))
    return cases


if __name__ == "__main__":
    main()
