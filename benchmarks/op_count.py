"""Kernel launches and host syncs of one training step, counted on the CPU (no GPU needed).

On a GPU in eager mode every ATen operator that is not a view launches at least one kernel.
When the tensors are small for the chip (all of ``moe_ffn.py``'s and ``encoder_step.py``'s
cases on an H200), a step costs about its number of operators times the per-operator
overhead (Python, autograd, dispatcher, launch); and an operator whose output size or value
the host needs (``nonzero``, ``bincount``, ``.item()``, ...) blocks the host until the GPU
has caught up.  This script counts both in one forward+backward step, with a
``TorchDispatchMode`` on CPU tensors: the operators are those CUDA runs, because the MoE
experts are forced onto the path CUDA takes (``Experts.impl = "grouped_mm"``, the CUDA
default for bf16 on sm90+).  Counts do not depend on the sizes, only on the code path.

Not counted: autocast's casts (this runs fp32; both the dense and the MoE layers cast
their weights under bf16 autocast) and kernels that one operator launches internally
(e.g. a sort is one operator here).

Rows: one FFN (dense ``PositionwiseFeedForward`` vs our ``MoEFeedForward``, top-1, as in
``moe_ffn.py``) and one encoder training step (the three Conformers of ``encoder_step.py``,
with padding in the batch and, for the MoE ones, the auxiliary losses and routing
statistics that ``moe_espnet`` adds to every step).

    python benchmarks/op_count.py --out benchmarks/results/op_count.json
"""
import argparse
import collections
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
import encoder_step  # noqa: E402
from _report import op_count_table, write_json  # noqa: E402

from espnet.nets.pytorch_backend.conformer.swish import Swish  # noqa: E402
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (  # noqa: E402
    PositionwiseFeedForward,
)

from espnet_omnirouter.moe import Experts, MoEFeedForward, Router, moe_aux_losses, moe_layer_stats  # noqa: E402

# Operators that return views (no kernel) and operators that make the host wait for CUDA.
VIEW_OPS = {
    "alias", "as_strided", "detach", "expand", "permute", "reshape", "_reshape_alias", "select",
    "slice", "split", "split_with_sizes", "squeeze", "t", "transpose", "unbind", "unsqueeze",
    "view", "_unsafe_view", "unfold",
}
SYNC_OPS = {
    "nonzero", "bincount", "_local_scalar_dense", "masked_select", "unique", "_unique2",
    "unique_consecutive", "unique_dim", "repeat_interleave", "is_nonzero", "equal",
    "masked_scatter", "histc",
}


class OpCounter(TorchDispatchMode):
    """Records the name of every ATen operator dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1]):
            name = "index(bool mask)"  # a nonzero inside
        self.ops.append(name)
        return func(*args, **(kwargs or {}))


def summarize(ops):
    """``{kernels, syncs, sync_ops}`` of a list of operator names."""
    kernels = [o for o in ops if o not in VIEW_OPS]
    syncs = collections.Counter(o for o in kernels if o in SYNC_OPS or o == "index(bool mask)")
    return {"kernels": len(kernels), "syncs": sum(syncs.values()), "sync_ops": dict(syncs), "ops": kernels}


def count_step(step, leaves):
    """Operators of the second call of ``step`` (the first may initialise lazily), with the
    gradients of ``leaves`` set to None before it, as a training step starts (otherwise
    each would be accumulated with an extra ``add_``)."""
    step()
    for t in leaves:
        t.grad = None
    with OpCounter() as counter:
        step()
    return summarize(counter.ops)


def ffn_steps(d, h, num_experts, frames):
    dense = PositionwiseFeedForward(d, h, 0.1, Swish()).train()
    moe = MoEFeedForward(Router(d, num_experts), Experts(num_experts, d, h, Swish(), 0.1)).train()
    moe.experts.impl = "grouped_mm"
    x = torch.randn(1, frames, d, requires_grad=True)

    def step(m):
        return (lambda: m(x).sum().backward()), [x, *m.parameters()]

    return {"dense": step(dense), "moe": step(moe)}


def encoder_steps(batch, frames, feat_dim):
    xs = torch.randn(batch, frames, feat_dim)
    ilens = torch.linspace(frames, frames * 0.6, batch).round().long()  # padding in the batch
    steps = {}
    for key, path in encoder_step.DEFAULT_CONFIGS.items():
        _, _, enc = encoder_step.load_encoder(path, feat_dim)
        enc.train()
        if hasattr(enc, "moe_ffns"):
            for m in enc.moe_ffns():
                m.experts.impl = "grouped_mm"

        def step(enc=enc):
            out, _, _ = enc(xs, ilens)
            loss = out.sum()
            if hasattr(enc, "moe_records"):
                records = enc.moe_records()
                aux = moe_aux_losses(records)
                for name, weight in encoder_step.AUX_WEIGHTS.items():
                    loss = loss + weight * aux[name]
                moe_layer_stats(records)
            loss.backward()

        steps[key] = step, list(enc.parameters())
    return steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the counts (with every operator's name) as JSON")
    parser.add_argument("--list", action="store_true", help="print the operators of the MoE FFN step in order")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    groups = {
        "ffn": ffn_steps(64, 256, args.experts, 256),
        "encoder": encoder_steps(batch=4, frames=400, feat_dim=80),
    }
    results = {g: {k: count_step(*s) for k, s in steps.items()} for g, steps in groups.items()}
    print(op_count_table(results))
    if args.list:
        for k, r in results["ffn"].items():
            print(f"\n# ffn {k}: {' '.join(r['ops'])}")
    if args.out:
        for r in results["encoder"].values():
            del r["ops"]  # thousands of names; the FFN's are kept
        write_json(
            args.out,
            dict(
                benchmark="op_count",
                machine=_bench.machine_info(torch.device("cpu")),
                config=dict(experts=args.experts, commit=_bench.git_commit()),
                results=results,
            ),
        )
    return results


if __name__ == "__main__":
    main()
