"""Inference cost of one MoE FFN by frame count: each CPU inference path against the dense FFN.

Where ``Experts.impl = "auto"`` stops taking the native path and falls back to the per-slice
loop (:data:`espnet_omnirouter.moe.experts.NATIVE_MAX_ROWS`) is read from this table.  One FFN
of the recipes' size (``--dims``: d x h, default 144 x 576, ESPnet's Swish) with ``--experts``
top-1 experts, eval mode, ``torch.inference_mode``, 2 threads by default; for each frame count
(``--frames``) these steps are timed interleaved in one process (``_bench.py``):

* ``dense``: ESPnet's ``PositionwiseFeedForward`` of the same size;
* ``auto``: :class:`MoEFeedForward` with the automatic choice (``auto_path`` in the JSON);
* one step per ``--impls`` value: the same layer with its experts forced onto that path.

All MoE steps share one router and one set of expert weights (so the same routing), and their
outputs are compared with the loop's (``max_abs_diff_vs_loop``).  The router's weights are
drawn N(0, 1), so that the frames spread over the experts about evenly, as a trained router
spreads them (an untrained one sends most frames to one or two experts); ``expert_frames`` in
the JSON has the counts.

    python benchmarks/ffn_infer_rows.py --out benchmarks/results/ffn_infer_rows.json
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from _report import rows_table, write_json  # noqa: E402

from espnet.nets.pytorch_backend.conformer.swish import Swish  # noqa: E402
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (  # noqa: E402
    PositionwiseFeedForward,
)

import espnet_omnirouter.encoders  # noqa: E402,F401  (declares ESPnet's Swish to the native path)
from espnet_omnirouter.moe import Experts, MoEFeedForward, Router  # noqa: E402
from espnet_omnirouter.moe.experts import IMPLS, compute_dtype  # noqa: E402


def parse_dims(text):
    """``"144x576"`` -> (144, 576)."""
    try:
        d, h = (int(v) for v in text.lower().split("x"))
        return d, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims: expected DxH such as 144x576, got {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000, 8000, 16000])
    parser.add_argument("--dims", type=parse_dims, default=(144, 576), help="d x h")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--impls", default="native,gemm_batch,loop", help="comma-separated Experts.impl values timed")
    _bench.add_common_args(parser, warmup=3)
    parser.set_defaults(repeats=15, device="cpu", threads=2)
    args = parser.parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in impls if i not in IMPLS or i == "auto"]
    if bad or "loop" not in impls:
        parser.error(f"--impls: values of {IMPLS[1:]} including 'loop' (the reference), got {args.impls!r}")

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    info = _bench.machine_info(device)
    torch.manual_seed(args.seed)
    d, h = args.dims
    dense = PositionwiseFeedForward(d, h, 0.1, Swish()).eval()
    router = Router(d, args.experts, top_k=1)
    torch.nn.init.normal_(router.weight)
    weights = Experts(args.experts, d, h, Swish()).state_dict()
    layers = {}
    for impl in ["auto"] + impls:  # one Experts module each: its own impl and packed weights
        experts = Experts(args.experts, d, h, Swish(), dropout_rate=0.1)
        experts.load_state_dict(weights)
        experts.impl = impl
        layers[impl] = MoEFeedForward(router, experts, own_router=False).eval()
    print(f"# ffn_infer_rows: {info['device_name']} | torch {info['torch']} | threads {torch.get_num_threads()} "
          f"| fp32 inference_mode | d x h {d} x {h}, {args.experts} experts | warmup {args.warmup} repeats {args.repeats}")
    t0 = time.time()
    cases = []
    for frames in args.frames:
        x = torch.randn(1, frames, d)
        steps = {"dense": lambda: dense(x)}
        steps.update({impl: (lambda layer=layer: layer(x)) for impl, layer in layers.items()})
        with torch.inference_mode():
            outs = {impl: layer(x) for impl, layer in layers.items()}
            (times, _), load = _bench.run_quietly(
                lambda: _bench.time_interleaved(steps, device, args.warmup, args.repeats),
                args.quiet_psi, args.quiet_wait_s, args.quiet_retries,
            )
        auto = layers["auto"]
        case = dict(
            frames=frames, machine_load=load, times=times,
            auto_path=auto.experts.path(x, frames, compute_dtype(x), grad=False),
            expert_frames=torch.bincount(auto.last.routing.expert[:, 0], minlength=args.experts).tolist(),
            variants={k: dict(median_s=_bench.median(v)) for k, v in times.items()},
        )
        for impl, out in outs.items():
            case["variants"][impl]["max_abs_diff_vs_loop"] = (out - outs["loop"]).abs().max().item()
        cases.append(case)
        print("\n".join(rows_table([case]).splitlines()[2:]), flush=True)
    elapsed = time.time() - t0
    print(rows_table(cases))
    print(f"# total {elapsed:.0f} s")
    if args.out:
        write_json(args.out, dict(
            benchmark="ffn_infer_rows", machine=info,
            config=dict(vars(args), dims=list(args.dims), elapsed_s=elapsed, activation="espnet Swish"),
            cases=cases,
        ))
    return cases


if __name__ == "__main__":
    main()
