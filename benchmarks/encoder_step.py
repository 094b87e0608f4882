"""One training step (forward + backward) of the dense, Switch and Omni-router Conformer.

The three encoders come from the recipe configs (``conf/train_asr_conformer.yaml``,
``conf/train_asr_switch_conformer.yaml``, ``conf/train_asr_omni_router_conformer.yaml``
by default): same width, depth and FFN size (d=144, 6 blocks, FFN 576, macaron; the MoE
ones with 8 top-1 experts in every FFN).  Each step runs the encoder in training mode on
one fixed batch (``--batch`` utterances of ``--seconds`` s of 80-dim features at 100
frames/s), a fixed random projection of the output as the loss, plus for the MoE encoders
the auxiliary losses with the weights of ``moe_espnet`` (0.01 load balance, 0.001 z-loss).

Times are medians of interleaved rounds, memory is the extra tensor memory of one step;
see ``_bench.py``.  CPU runs fp32; CUDA runs bf16 autocast.

    python benchmarks/encoder_step.py --out benchmarks/results/encoder_step.json
"""
import argparse
import os
import sys
import time
from contextlib import nullcontext

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from _report import encoder_table, write_json  # noqa: E402

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder  # noqa: E402
from espnet2.asr.encoder.contextual_block_conformer_encoder import ContextualBlockConformerEncoder  # noqa: E402

from espnet_omnirouter.encoders import (  # noqa: E402
    DuoConformerEncoder,
    OmniRouterConformerEncoder,
    OmniRouterContextualBlockConformerEncoder,
    SwitchConformerEncoder,
)
from espnet_omnirouter.moe import moe_aux_losses  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = {
    "conformer": ConformerEncoder,
    "switch_conformer": SwitchConformerEncoder,
    "omni_router_conformer": OmniRouterConformerEncoder,
    "duo_conformer": DuoConformerEncoder,  # encoder_infer.py --duo-config
    "contextual_block_conformer": ContextualBlockConformerEncoder,  # streaming_block.py
    "omni_router_contextual_block_conformer": OmniRouterContextualBlockConformerEncoder,
}
DEFAULT_CONFIGS = {
    "dense": "conf/train_asr_conformer.yaml",
    "switch": "conf/train_asr_switch_conformer.yaml",
    "omni": "conf/train_asr_omni_router_conformer.yaml",
}
AUX_WEIGHTS = {"lb": 0.01, "z": 0.001}  # moe_espnet defaults


def load_encoder(path, input_size):
    with open(path if os.path.isabs(path) else os.path.join(ROOT, path)) as f:
        conf = yaml.safe_load(f)
    name = conf["encoder"]
    return name, conf.get("encoder_conf", {}), CLASSES[name](input_size, **conf.get("encoder_conf", {}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, path in DEFAULT_CONFIGS.items():
        parser.add_argument(f"--{key}-config", default=path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--min-seconds", type=float, default=None,
        help="lengths spread evenly from this to --seconds (default: all --seconds, no padding)",
    )
    parser.add_argument("--feat-dim", type=int, default=80)
    _bench.add_common_args(parser, warmup=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = _bench.pick_device(args.device)
    info = _bench.machine_info(device)
    dtype_name = "bf16 autocast" if device.type == "cuda" else "fp32"
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    )
    torch.manual_seed(args.seed)
    frames = int(round(args.seconds * 100))
    lo = frames if args.min_seconds is None else int(round(args.min_seconds * 100))
    ilens = torch.linspace(frames, lo, args.batch).round().long()
    xs = torch.randn(args.batch, frames, args.feat_dim, device=device)
    ilens = ilens.to(device)

    encoders, configs = {}, {}
    for key in DEFAULT_CONFIGS:
        path = getattr(args, f"{key}_config")
        name, conf, enc = load_encoder(path, args.feat_dim)
        encoders[key] = enc.to(device).train()
        configs[key] = dict(config=path, encoder=name, encoder_conf=conf)
    print(
        f"# encoder_step: {info['device_name']} | torch {info['torch']} | threads {torch.get_num_threads()} "
        f"| {dtype_name} | batch {args.batch} x {args.seconds:g} s (min {lo / 100:g} s) | "
        f"warmup {args.warmup} repeats {args.repeats}"
    )
    params = {k: sum(p.numel() for p in e.parameters()) for k, e in encoders.items()}

    projections = {}

    def make_step(key, enc):
        plist = list(enc.parameters())

        def zero():
            for p in plist:
                p.grad = None

        def step():
            zero()
            with autocast():
                out, olens, _ = enc(xs, ilens)
                if key not in projections:
                    projections[key] = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
                loss = (out.float() * projections[key]).sum() / out.shape[0]
                if hasattr(enc, "moe_records"):
                    aux = moe_aux_losses(enc.moe_records())
                    loss = loss + sum(w * aux[n] for n, w in AUX_WEIGHTS.items())
            loss.backward()

        step.zero = zero
        return step

    steps = {k: make_step(k, e) for k, e in encoders.items()}
    t0 = time.time()
    (times, _), load = _bench.run_quietly(
        lambda: _bench.time_interleaved(steps, device, args.warmup, args.repeats),
        args.quiet_psi, args.quiet_wait_s, args.quiet_retries,
    )
    results = {}
    for k, ts in times.items():
        results[k] = dict(times_s=ts, median_s=_bench.median(ts), params=params[k], **configs[k])
    if not args.no_memory:
        for k, step in steps.items():
            results[k]["peak_bytes"] = _bench.peak_memory(step, device)
    elapsed = time.time() - t0
    print(encoder_table(results, memory=not args.no_memory))
    print(f"# total {elapsed:.0f} s")
    if args.out:
        write_json(
            args.out,
            dict(
                benchmark="encoder_step",
                machine=info,
                config=dict(vars(args), dtype=dtype_name, ilens=ilens.tolist(), elapsed_s=elapsed),
                machine_load=load,
                results=results,
            ),
        )
    return results


if __name__ == "__main__":
    main()
