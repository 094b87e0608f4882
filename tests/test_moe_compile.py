"""MoEFeedForward under torch.compile (CPU): same output and gradients as eager.

Also the expert implementations against each other, and (skipped without a GPU) the CUDA
paths against CPU; ``benchmarks/gpu_check.sh`` runs this file on GPU machines.

The default backend here is ``aot_eager``: Dynamo captures the graphs and AOTAutograd
traces their forward and backward, which is where data-dependent MoE code breaks, in a few
seconds.  Inductor adds its C++ code generation (about a minute on a 2-core machine);
set ``MOE_TEST_INDUCTOR=1`` to also run the inductor case.
"""
import copy
import os
from contextlib import nullcontext

import pytest
import torch

from espnet_omnirouter.moe import Experts, MoEFeedForward, Router

D, H, E = 16, 32, 4


def make_layer(top_k, capacity_factor=None):
    torch.manual_seed(0)
    router = Router(D, E, top_k=top_k)
    torch.nn.init.normal_(router.weight, std=1.0)  # far from uniform routing
    experts = Experts(E, D, H, torch.nn.SiLU(), dropout_rate=0.0)
    return MoEFeedForward(router, experts, capacity_factor=capacity_factor).train()


def run(layer, x, mask, grad):
    y = layer(x, mask)
    params = [x, layer.router.weight, *layer.experts.parameters()]
    return y, torch.autograd.grad(y, params, grad)


SLOW = pytest.mark.skipif(
    os.environ.get("MOE_TEST_INDUCTOR") != "1", reason="slow; set MOE_TEST_INDUCTOR=1"
)


@pytest.mark.parametrize(
    "top_k, capacity_factor, padded, backend",
    [
        (1, None, True, "aot_eager"),
        (1, None, False, "aot_eager"),
        (2, None, True, "aot_eager"),
        (1, 0.6, True, "aot_eager"),
        pytest.param(1, None, True, "inductor", marks=SLOW),
    ],
)
def test_compiled_matches_eager(top_k, capacity_factor, padded, backend):
    torch._dynamo.reset()
    layer = make_layer(top_k, capacity_factor)
    x = torch.randn(3, 10, D, requires_grad=True)
    mask = None
    if padded:
        mask = torch.ones(3, 10, dtype=torch.bool)
        mask[1, 6:] = False
        mask[2, 2:] = False
    grad = torch.randn(3, 10, D)
    y, g = run(layer, x, mask, grad)
    eager_record = layer.last
    compiled = torch.compile(layer, backend=backend)
    y_c, g_c = run(compiled, x, mask, grad)
    torch.testing.assert_close(y_c, y, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_c, g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert layer.last is not eager_record  # the compiled forward recorded its routing
    assert int(layer.last.dropped) == int(eager_record.dropped)
    torch.testing.assert_close(layer.last.routing.probs, eager_record.routing.probs)
    torch.testing.assert_close(layer.last.routing.expert, eager_record.routing.expert)


@pytest.mark.parametrize("top_k, capacity_factor", [(1, None), (2, None), (1, 0.6), (2, 0.6)])
def test_expert_implementations_agree(top_k, capacity_factor):
    """The fused per-expert loop and the grouped_mm path (eager, CPU) agree."""
    layer = make_layer(top_k, capacity_factor)
    x = torch.randn(3, 10, D, requires_grad=True)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 4:] = False
    grad = torch.randn(3, 10, D)
    results = {}
    for impl in ("loop", "grouped_mm"):
        layer.experts.impl = impl
        results[impl] = run(layer, x, mask, grad), int(layer.last.dropped)
    (y_l, g_l), dropped_l = results["loop"]
    (y_g, g_g), dropped_g = results["grouped_mm"]
    assert dropped_l == dropped_g
    torch.testing.assert_close(y_g, y_l, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_g, g_l):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.all(y_l[2, 4:] == 0)


def test_sorted_expert_forward_agrees():
    """``Experts.forward`` on frames sorted by expert: both implementations, with grads."""
    experts = make_layer(1).experts
    x = torch.randn(20, D, requires_grad=True)
    counts = torch.tensor([6, 0, 9, 5])
    expert = torch.repeat_interleave(torch.arange(E), counts)
    outs = []
    for impl in ("loop", "grouped_mm"):
        experts.impl = impl
        y = experts(x, counts.cumsum(0), expert)
        outs.append((y, torch.autograd.grad(y, [x, *experts.parameters()], torch.ones_like(y))))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.all(outs[0][1][3][1] == 0)  # idle expert 1: zero (not missing) bias gradient


@pytest.mark.parametrize("impl", ["auto", "padded", "gemm_batch", "native"])
@pytest.mark.parametrize("num_experts", [1, 3, 8])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("widths", [(D, H), (20, 40)])  # whole 16-column tiles; and remainders
def test_inference_paths_match_training_path(impl, num_experts, top_k, padded, widths):
    """CPU inference (the padded, gemm_batch and native paths; "auto" -> native where its C
    kernels build, as on this project's x86 machines) gives the training path's eval output;
    the routing is skewed so that slices differ in size (padding rows in the padded batched
    GEMM, slices of more and fewer than the native GEMM's 6-row tiles)."""
    from espnet_omnirouter.moe import native

    d, h = widths
    top_k = min(top_k, num_experts)
    torch.manual_seed(0)
    router = Router(d, num_experts, top_k=top_k)
    torch.nn.init.normal_(router.weight, std=1.0)
    layer = MoEFeedForward(router, Experts(num_experts, d, h, torch.nn.SiLU(), 0.1)).eval()
    layer.experts.impl = impl
    x = torch.randn(3, 17, d, requires_grad=True)
    mask = None
    if padded:
        mask = torch.ones(3, 17, dtype=torch.bool)
        mask[1, 11:] = False
        mask[2, 3:] = False
    layer.experts.impl = "auto"
    y_train = layer(x, mask)  # autograd records: the training path (per-slice loop)
    assert layer.experts.path(x, 51, grad=True) == "loop"
    layer.experts.impl = impl
    counts = torch.bincount(layer.last.routing.expert.reshape(-1), minlength=num_experts)
    assert num_experts == 1 or counts.max() > counts.min()
    with torch.inference_mode():
        assert layer.experts.path(x, 51, grad=False) == (("native" if native.available() else "gemm_batch")
                                                          if impl == "auto" else impl)
        y_infer = layer(x, mask)
    torch.testing.assert_close(y_infer, y_train.detach(), atol=1e-6, rtol=1e-5)
    if padded:
        assert torch.all(y_infer[2, 3:] == 0)


@pytest.mark.parametrize("top_k", [1, 2])
def test_native_path_matches_training_path_at_batch_sizes(top_k):
    """"auto" runs a batch of decoding size (8 utterances of different lengths, 2,000-4,000
    assignments: above PADDED_MAX_ROWS) on the native path, with the training path's output."""
    from espnet_omnirouter.moe import native
    from espnet_omnirouter.moe.experts import NATIVE_MAX_ROWS, PADDED_MAX_ROWS

    torch.manual_seed(0)
    router = Router(D, 8, top_k=top_k)
    torch.nn.init.normal_(router.weight, std=1.0)
    layer = MoEFeedForward(router, Experts(8, D, H, torch.nn.SiLU(), 0.1)).eval()
    lengths = torch.tensor([250, 240, 250, 180, 250, 120, 249, 250])
    mask = torch.arange(250)[None, :] < lengths[:, None]
    x = torch.randn(8, 250, D)
    assignments = int(lengths.sum()) * top_k
    assert PADDED_MAX_ROWS < assignments <= NATIVE_MAX_ROWS
    y_train = layer(x.requires_grad_(), mask)  # autograd records: the training path
    assert native.available(), native.why_not  # x86-64 with AVX2 and a C compiler, as here
    with torch.inference_mode():
        assert layer.experts.path(x, assignments, grad=False) == "native"
        y_infer = layer(x, mask)
    torch.testing.assert_close(y_infer, y_train.detach(), atol=1e-5, rtol=1e-5)
    assert torch.all(y_infer[5, 120:] == 0)


@pytest.mark.parametrize("run_cost_flop", [3e6, 0.0])  # one run; a run per group of alike slices
def test_padded_path_with_idle_experts_and_no_frames(run_cost_flop, monkeypatch):
    from espnet_omnirouter.moe import experts as experts_module

    monkeypatch.setattr(experts_module, "PADDED_RUN_COST_FLOP", run_cost_flop)
    experts = make_layer(1).experts
    x = torch.randn(40, D)
    counts = torch.tensor([6, 0, 29, 5])
    expert = torch.repeat_interleave(torch.arange(E), counts)
    runs = experts_module.padded_runs(counts.tolist(), max(1, round(run_cost_flop / (4 * D * H))))
    assert len(runs) == (1 if run_cost_flop else 4)  # with a run cost of 1 row: one run per expert
    outs = {}
    with torch.no_grad():
        for impl in ("loop", "padded"):
            experts.impl = impl
            outs[impl] = experts(x, counts.cumsum(0), expert)
        torch.testing.assert_close(outs["padded"], outs["loop"], atol=1e-6, rtol=1e-5)
        # No assignment at all (every frame padded): zeros, not an error.
        empty = torch.zeros(0, dtype=torch.long)
        y = experts.combine(x, empty, torch.zeros(E, dtype=torch.int32), empty, torch.zeros(0), True)
    assert y.shape == x.shape and torch.all(y == 0)


def test_gemm_groups_matches_slice_matmuls():
    """MKL's batched GEMM is found in PyTorch's MKL builds and computes every slice's
    product (empty slices included), with and without accumulation; bad input is named."""
    from espnet_omnirouter.moe import gemm_batch

    assert gemm_batch.available() == torch.backends.mkl.is_available()
    gen = torch.Generator().manual_seed(0)
    sizes = [5, 0, 12, 1, 0, 7]
    a = torch.randn(sum(sizes), 9, generator=gen)
    b = torch.randn(len(sizes), 9, 4, generator=gen)
    c0 = torch.randn(sum(sizes), 4, generator=gen)
    want = torch.cat([s @ w for s, w in zip(a.split(sizes), b.unbind(0))])
    for beta in (0.0, 1.0):
        c = c0.clone() if beta else torch.full_like(c0, float("nan"))  # beta 0: c is not read
        gemm_batch.gemm_groups(a, b, c, sizes, beta=beta)
        torch.testing.assert_close(c, want + (c0 if beta else 0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sizes .* do not match"):
        gemm_batch.gemm_groups(a, b, c, sizes[:-1] + [6])
    with pytest.raises(ValueError, match="contiguous"):
        gemm_batch.gemm_groups(a.t().contiguous().t(), b, c, sizes)
    with pytest.raises(ValueError, match="float32"):
        gemm_batch.gemm_groups(a.double(), b, c, sizes)


def test_padded_runs_have_least_cost():
    """padded_runs equals a brute force over every split of the experts into runs."""
    import itertools

    from espnet_omnirouter.moe.experts import padded_runs

    def cost(runs, sizes, run_cost):
        return sum((b - a) * max(sizes[a:b]) + run_cost for a, b in runs)

    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        e = int(torch.randint(1, 8, (1,), generator=gen))
        sizes = torch.randint(0, 40, (e,), generator=gen).tolist()
        run_cost = int(torch.randint(1, 30, (1,), generator=gen))
        runs = padded_runs(sizes, run_cost)
        assert [a for a, _, _ in runs] == [0] + [b for _, b, _ in runs[:-1]] and runs[-1][1] == e
        assert all(c == max(sizes[a:b]) for a, b, c in runs)
        splits = [
            list(zip((0,) + cuts, cuts + (e,)))
            for k in range(e)
            for cuts in itertools.combinations(range(1, e), k)
        ]
        best = min(cost(s, sizes, run_cost) for s in splits)
        assert cost([(a, b) for a, b, _ in runs], sizes, run_cost) == best, (sizes, run_cost)


def test_automatic_expert_path_choice(monkeypatch):
    """"auto": native for float32 CPU inference (eval, no autograd) up to NATIVE_MAX_ROWS
    assignments; where the C kernels cannot run, gemm_batch up to PADDED_MAX_ROWS, padded where
    neither can (other dtypes, no MKL); the loop in training mode, when autograd records or
    above those sizes; forcing an inference path under autograd, or one where it cannot run,
    is an error."""
    from espnet_omnirouter.moe import gemm_batch, native
    from espnet_omnirouter.moe.experts import NATIVE_MAX_ROWS, PADDED_MAX_ROWS

    assert NATIVE_MAX_ROWS > PADDED_MAX_ROWS  # batch 8 decoding (~2,000 assignments) runs native
    experts = make_layer(1).experts.eval()
    x = torch.randn(8, D)
    assert native.available(), native.why_not  # x86-64 with AVX2 and a C compiler, as here
    assert experts.path(x, NATIVE_MAX_ROWS, grad=False) == "native"
    assert experts.path(x, NATIVE_MAX_ROWS + 1, grad=False) == "loop"
    assert experts.path(x, PADDED_MAX_ROWS, torch.float64, grad=False) == "padded"
    assert experts.path(x, PADDED_MAX_ROWS + 1, torch.float64, grad=False) == "loop"
    with monkeypatch.context() as m:
        m.setattr(native, "available", lambda: False)
        m.setattr(native, "why_not", "no compiler (test)")
        assert experts.path(x, PADDED_MAX_ROWS, grad=False) == "gemm_batch"
        assert experts.path(x, PADDED_MAX_ROWS + 1, grad=False) == "loop"
        experts.impl = "native"
        with pytest.raises(ValueError, match="'native' cannot run: no compiler"):
            experts.path(x, 8, grad=False)
        experts.impl = "auto"
        m.setattr(gemm_batch, "available", lambda: False)
        assert experts.path(x, PADDED_MAX_ROWS, grad=False) == "padded"
        experts.impl = "gemm_batch"
        with pytest.raises(ValueError, match="'gemm_batch' runs float32 on CPU with MKL"):
            experts.path(x, 8, grad=False)
        experts.impl = "auto"
    assert experts.train().path(x, 8, grad=False) == "loop"  # dropout masks as the loop's
    experts.eval()
    assert experts.path(x, 8, grad=True) == "loop"
    experts.impl = "loop"
    assert experts.path(x, 8, grad=False) == "loop"
    experts.impl = "grouped_mm"
    assert experts.path(x, 8, grad=False) == "grouped_mm"
    for impl in ("padded", "gemm_batch", "native"):
        experts.impl = impl
        with pytest.raises(ValueError, match=f"'{impl}' is inference only"):
            experts.path(x, 8, grad=True)
    experts.impl = "gemm_batch"
    with pytest.raises(ValueError, match="'gemm_batch' runs float32 on CPU with MKL, not torch.bfloat16"):
        experts.path(x, 8, torch.bfloat16, grad=False)
    experts.impl = "native"
    with pytest.raises(ValueError, match="'native' cannot run: float32 on CPU, not torch.bfloat16"):
        experts.path(x, 8, torch.bfloat16, grad=False)
    experts.impl = "fast"
    with pytest.raises(ValueError, match="Experts.impl must be one of"):
        experts.path(x, 8, grad=False)


class _PlainLoopExperts(Experts):
    """The loop path as separate autograd ops (what _ExpertLoop fuses), for reference."""

    def combine(self, flat, rows, ends, expert, gate, unique):
        x = flat.index_select(0, rows)
        params = zip(self.w1.unbind(0), self.b1.unbind(0), self.w2.unbind(0), self.b2.unbind(0))
        y = torch.cat(
            [
                torch.addmm(b2, self.dropout(self.activation(torch.addmm(b1, xe, w1))), w2)
                for xe, (w1, b1, w2, b2) in zip(x.split(torch.diff(ends, prepend=ends.new_zeros(1)).tolist()), params)
            ]
        )
        out = flat.new_zeros(flat.shape)
        return out.index_add(0, rows, y * gate.unsqueeze(1))


@pytest.mark.parametrize("top_k", [1, 2])
def test_fused_loop_with_dropout_matches_plain_autograd(top_k):
    """Same dropout masks (same RNG order), same output and gradients; also the no-grad path."""
    torch.manual_seed(0)
    fused = MoEFeedForward(Router(D, E, top_k=top_k), Experts(E, D, H, torch.nn.SiLU(), 0.5))
    torch.nn.init.normal_(fused.router.weight, std=1.0)
    plain = MoEFeedForward(Router(D, E, top_k=top_k), _PlainLoopExperts(E, D, H, torch.nn.SiLU(), 0.5))
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 12, D, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    grad = torch.randn(2, 12, D)
    results = []
    for layer in (fused, plain):
        torch.manual_seed(1)
        results.append(run(layer.train(), x, mask, grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.manual_seed(1)
        torch.testing.assert_close(fused(x, mask), results[0][0], atol=1e-6, rtol=1e-6)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@CUDA
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("mode", ["fp32", "bf16"])  # per-slice loop; grouped_mm on sm90+
def test_cuda_matches_cpu(mode, top_k):
    layer = make_layer(top_k)
    x = torch.randn(4, 40, D, requires_grad=True)
    mask = torch.ones(4, 40, dtype=torch.bool)
    mask[1, 30:] = False
    grad = torch.randn(4, 40, D)
    y, g = run(layer, x, mask, grad)
    gpu = copy.deepcopy(layer).cuda()
    x_gpu = x.detach().cuda().requires_grad_()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if mode == "bf16" else nullcontext()
    with amp:
        y_gpu, g_gpu = run(gpu, x_gpu, mask.cuda(), grad.cuda())
    tol = dict(atol=1e-4, rtol=1e-4) if mode == "fp32" else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(y_gpu.float().cpu(), y, **tol)
    for a, b in zip(g_gpu, g):
        torch.testing.assert_close(a.float().cpu(), b, **tol)
    assert gpu.last.routing.probs.dtype == torch.float32


@CUDA
@pytest.mark.skipif(not hopper(), reason="grouped_mm path needs sm90+")
def test_cuda_grouped_mm_path_has_no_host_sync():
    """Top-1, dropless, no padding mask, bf16: forward+backward never waits for the GPU."""
    layer = make_layer(1).cuda()
    x = torch.randn(4, 64, D, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert layer.experts.use_grouped_mm(x.to(torch.bfloat16))
        layer(x).float().sum().backward()  # warm-up (lazy init may sync)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer(x).float().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)


@CUDA
@pytest.mark.skipif(not hopper(), reason="grouped_mm path needs sm90+")
def test_cuda_bf16_compiled_matches_eager():
    torch._dynamo.reset()
    layer = make_layer(1).cuda()
    x = torch.randn(3, 16, D, device="cuda", requires_grad=True)
    grad = torch.randn(3, 16, D, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, g = run(layer, x, None, grad)
        y_c, g_c = run(torch.compile(layer, backend="aot_eager"), x, None, grad)
    torch.testing.assert_close(y_c, y, atol=1e-2, rtol=1e-2)
    for a, b in zip(g_c, g):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


def _count_cuda_syncs(step):
    """Host syncs of ``step()`` on CUDA, from torch's sync debug mode (one warning each)."""
    import warnings

    step()  # warm-up: lazy initialisation may sync
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchronizing" in str(w.message) for w in caught)


@CUDA
@pytest.mark.skipif(not hopper(), reason="grouped_mm path needs sm90+")
def test_cuda_encoder_step_syncs_once_more_than_dense():
    """On the GPU, a Switch Conformer training step with padding, bf16 autocast, aux losses and
    statistics waits for the device exactly once more than the dense Conformer's (the
    padding's nonzero); tests/test_encoders.py checks the same operator by operator on CPU."""
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    from espnet_omnirouter.encoders import SwitchConformerEncoder
    from espnet_omnirouter.moe import moe_aux_losses, moe_layer_stats

    kwargs = dict(
        output_size=64, attention_heads=2, linear_units=128, num_blocks=2, input_layer="conv2d",
        macaron_style=True, rel_pos_type="latest", pos_enc_layer_type="rel_pos",
        selfattention_layer_type="rel_selfattn", cnn_module_kernel=5,
    )
    torch.manual_seed(0)
    xs = torch.randn(3, 120, 20, device="cuda")
    ilens = torch.tensor([120, 90, 70], device="cuda")
    encoders = {
        "dense": ConformerEncoder(20, **kwargs).cuda().train(),
        "switch": SwitchConformerEncoder(20, num_experts=4, **kwargs).cuda().train(),
    }

    def step(enc):
        def run_once():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out, _, _ = enc(xs, ilens)
                loss = out.float().sum()
                if hasattr(enc, "moe_records"):
                    records = enc.moe_records()
                    loss = loss + sum(moe_aux_losses(records).values())
                    moe_layer_stats(records)
            loss.backward()

        return run_once

    syncs = {k: _count_cuda_syncs(step(enc)) for k, enc in encoders.items()}
    hidden = torch.empty(1, kwargs["output_size"], device="cuda", dtype=torch.bfloat16)
    assert all(ffn.experts.use_grouped_mm(hidden) for ffn in encoders["switch"].moe_ffns())
    assert syncs["switch"] == syncs["dense"] + 1, syncs
