"""The C kernels of the native CPU inference path (espnet_omnirouter/moe/native.py): build,
router, packed weights and their refresh, activations applied in C, switching off.  Their outputs against the training
path, layer by layer, are in tests/test_moe_compile.py."""
import os
import subprocess
import sys

import pytest
import torch

from espnet_omnirouter.moe import Experts, MoEFeedForward, Router, native


def test_builds_into_the_cache_dir_and_checks(tmp_path):
    """A fresh process builds the library into $ESPNET_OMNIROUTER_CACHE (from the source read
    at import) and passes its check; ESPNET_OMNIROUTER_NATIVE=0 turns it off, and says so."""
    code = "from espnet_omnirouter.moe import native; print(native.available(), native.why_not or '-')"
    env = {**os.environ, "ESPNET_OMNIROUTER_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["True", "-"], out.stdout + out.stderr
    assert [p.name.startswith("native_cpu-") and p.suffix == ".so" for p in tmp_path.iterdir()] == [True]
    # The C source is read at import: a change to the file before first use is not compiled
    # against the bindings of the imported module (here: the file "moved away" after import).
    late = "from espnet_omnirouter.moe import native; native.SOURCE = '/nonexistent.c'; print(native.available())"
    env_late = {**env, "ESPNET_OMNIROUTER_CACHE": str(tmp_path / "late")}
    out = subprocess.run([sys.executable, "-c", late], env=env_late, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "True", out.stdout + out.stderr
    assert [p.suffix for p in (tmp_path / "late").iterdir()] == [".so"]
    env["ESPNET_OMNIROUTER_NATIVE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False ESPNET_OMNIROUTER_NATIVE=0")


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("num_experts", [3, 8, 11])  # 11: a softmax row of 8 + 3
def test_router_matches_pytorch(top_k, num_experts):
    """Under inference the router runs in C: the same logits, probabilities, choices and gates
    as its PyTorch code (which runs whenever autograd records)."""
    torch.manual_seed(0)
    router = Router(20, num_experts, top_k=top_k).eval()
    torch.nn.init.normal_(router.weight, std=1.0)
    x = torch.randn(57, 20) * 3
    want = router(x)  # the weight requires grad: PyTorch code
    assert want.logits.requires_grad
    with torch.inference_mode():
        assert router._native_runs(x)
        got = router(x)
    for name in ("logits", "probs", "gate"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name).detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.expert, want.expert)
    with torch.inference_mode():
        router.selection_noise = lambda logits: logits  # RoE: PyTorch code
        assert not router._native_runs(x)
        router.selection_noise = None
        router.jitter = 0.1
        assert router._native_runs(x) and not router.train()._native_runs(x)  # jitter drawn in training


def test_packed_weights_follow_weight_changes():
    """The native path's packed copy of the weights is rebuilt after an in-place change (an
    optimizer step) and after load_state_dict, and is not part of the state or of a deepcopy."""
    import copy

    torch.manual_seed(0)
    layer = MoEFeedForward(Router(16, 4), Experts(4, 16, 32, torch.nn.ReLU())).eval()
    x = torch.randn(2, 9, 16)
    other = copy.deepcopy(layer)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    with torch.inference_mode():
        before = layer(x)
        assert layer.experts._packed is not None and "_packed" not in str(layer.state_dict().keys())
        assert copy.deepcopy(layer).experts._packed is None
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x), atol=0, rtol=0)
    with torch.no_grad():
        layer.experts.w2.mul_(2)
        layer.experts.b2.mul_(2)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), 2 * other(x), atol=1e-6, rtol=1e-5)
    assert not torch.equal(before, layer(x).detach())


def test_packed_weights_follow_fused_optimizer_steps():
    """Weights that change without a version bump still reach the native path: after the steps
    of PyTorch's fused Adam (as ESPnet's trainer runs it), and after an update through ``.data``
    while gradients are present, the eval output equals a fresh copy's.  (A stale copy once made
    the validation losses of an ESPnet training wrong, and with them its checkpoint choice.)"""
    import copy

    torch.manual_seed(0)
    layer = MoEFeedForward(Router(16, 4), Experts(4, 16, 32, torch.nn.ReLU()))
    x = torch.randn(2, 9, 16)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    outputs = []
    for _ in range(2):
        layer.train()
        layer(x).pow(2).sum().backward()
        version = layer.experts.w1._version
        opt.step()
        opt.zero_grad()
        assert layer.experts.w1._version == version  # fused: no version bump, the case tested
        layer.eval()
        with torch.no_grad():
            assert layer.experts.path(x, 18, grad=False) == "native"
            outputs.append(layer(x))
            torch.testing.assert_close(outputs[-1], copy.deepcopy(layer)(x), atol=0, rtol=0)
    assert not torch.equal(outputs[0], outputs[1])
    layer.train()
    layer(x).pow(2).sum().backward()
    layer.eval()
    with torch.no_grad():
        layer(x)
        layer.experts.w2.data.mul_(2)  # no version bump, no optimizer: only the gradient says so
        torch.testing.assert_close(layer(x), copy.deepcopy(layer)(x), atol=0, rtol=0)


def test_bad_expert_index_is_an_error():
    assert native.available(), native.why_not
    experts = Experts(4, 16, 32, torch.nn.ReLU()).eval()
    flat = torch.randn(5, 16)
    with torch.inference_mode(), pytest.raises(ValueError, match="expert outside 0..3"):
        experts.native(flat, None, torch.tensor([[0], [1], [4], [2], [3]]), torch.ones(5, 1))


class _Swish(torch.nn.Module):  # x * sigmoid(x), declared below to equal "silu"
    def forward(self, x):
        return x * torch.sigmoid(x)


class _Shifted(torch.nn.ReLU):  # a subclass that computes something else: not taken for ReLU
    def forward(self, x):
        return torch.relu(x - 0.5)


@pytest.mark.parametrize(
    "make, fused",
    [(torch.nn.ReLU, native.ACT_RELU), (torch.nn.SiLU, native.ACT_SILU), (_Swish, native.ACT_SILU),
     (torch.nn.GELU, native.ACT_NONE), (_Shifted, native.ACT_NONE)],
)
def test_activation_in_the_gemm_matches_the_loop(make, fused):
    """ReLU, SiLU and registered equivalents are applied by the C GEMM (one call); other
    activations, subclasses included, run in PyTorch between the two calls; both give the
    training path's (loop) output."""
    native.register_activation(_Swish, "silu")
    assert native.activation_code(make()) == fused
    torch.manual_seed(0)
    layer = MoEFeedForward(Router(24, 5, top_k=2), Experts(5, 24, 40, make(), 0.1)).eval()
    x = torch.randn(3, 31, 24) * 2
    mask = torch.arange(31).expand(3, 31) < torch.tensor([[31], [20], [7]])
    extreme = x.clone()
    extreme[0, :3] = torch.tensor([-100.0, float("nan"), 100.0]).unsqueeze(1)
    with torch.inference_mode():
        layer.experts.impl = "loop"
        want, want_extreme = layer(x, mask), layer(extreme, mask)
        layer.experts.impl = "native"
        if fused != native.ACT_NONE:  # the C GEMM applies it: the PyTorch activation is not called
            layer.experts._hidden = lambda pre: pytest.fail("the activation ran in PyTorch")
        torch.testing.assert_close(layer(x, mask), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(extreme, mask), want_extreme, atol=1e-4, rtol=1e-5, equal_nan=True)


def _count(monkeypatch, name):
    """Count the calls of ``native.<name>`` (after the kernels' own check, which calls them)."""
    assert native.available(), native.why_not
    seen = []
    original = getattr(native, name)
    monkeypatch.setattr(native, name, lambda *a, **k: seen.append(1) or original(*a, **k))
    return seen


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_inference_ffn_is_one_c_call(top_k, padded, shared, monkeypatch):
    """At CPU inference an MoE FFN (its own router or a shared one) is one C call (native.moe_slot):
    no PyTorch matmul, sort or separate router call; output and routing record equal the PyTorch
    path's (autograd recording), zero on padded frames."""
    torch.manual_seed(0)
    router = Router(24, 6, top_k=top_k)
    torch.nn.init.normal_(router.weight)
    layer = MoEFeedForward(router, Experts(6, 24, 40, torch.nn.SiLU()), own_router=not shared).eval()
    x = torch.randn(3, 17, 24)
    mask = torch.arange(17).expand(3, 17) < torch.tensor([[17], [9], [4]]) if padded else None
    want = layer(x, mask)  # the weights require grad: the PyTorch router and dispatch
    want_record = layer.last.routing
    slot, route, experts = (_count(monkeypatch, n) for n in ("moe_slot", "route", "experts"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a PyTorch operator of the dispatch ran")

    for name in ("addmm", "mm", "matmul", "sort", "baddbmm"):
        monkeypatch.setattr(torch, name, forbidden)
    with torch.inference_mode():
        got = layer(x, mask)
    assert (slot, route, experts) == ([1], [], [])
    torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    record = layer.last.routing
    assert torch.equal(record.expert, want_record.expert) and record.expert.shape[0] == (mask.sum() if padded else 51)
    for name in ("gate", "probs", "logits"):
        torch.testing.assert_close(getattr(record, name), getattr(want_record, name).detach(), atol=1e-5, rtol=1e-5)
    if padded:
        assert (got[~mask] == 0).all()


@pytest.mark.parametrize("case", ["training", "grad", "noise", "loop", "gelu"])
def test_where_the_one_call_ffn_does_not_run(case, monkeypatch):
    """Training mode, autograd recording, RoE's selection noise, an impl other than auto/native and
    an activation the C GEMM does not apply each keep the separate paths (router, then experts)."""
    torch.manual_seed(0)
    act = torch.nn.GELU() if case == "gelu" else torch.nn.ReLU()
    layer = MoEFeedForward(Router(16, 4), Experts(4, 16, 32, act)).eval()
    if case == "training":
        layer.train()
    elif case == "noise":
        layer.router.selection_noise = lambda logits: logits
    elif case == "loop":
        layer.experts.impl = "loop"
    slot, experts = _count(monkeypatch, "moe_slot"), _count(monkeypatch, "experts")
    x = torch.randn(2, 9, 16)
    if case == "grad":
        layer(x)
    else:
        with torch.no_grad():
            layer(x)
    # noise: PyTorch's router, then the experts' native path; gelu: the two calls around PyTorch's GELU
    assert slot == [] and experts == ([1] if case in ("noise", "gelu") else [])


def test_training_mode_dropout_is_not_skipped():
    """Dropout that is active (training mode, p > 0) keeps the activation in PyTorch: with
    p = 1 every hidden unit is dropped and each routed frame gets gate * b2 of its expert."""
    torch.manual_seed(0)
    experts = Experts(4, 16, 32, torch.nn.ReLU(), dropout_rate=1.0).train()
    flat, expert, gate = torch.randn(9, 16), torch.randint(0, 4, (9, 1)), torch.rand(9, 1)
    with torch.no_grad():
        got = experts.native(flat, None, expert, gate)
        torch.testing.assert_close(got, gate * experts.b2[expert[:, 0]], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(experts.eval().native(flat, None, expert, gate), got)


def test_register_activation_checks_its_name():
    with pytest.raises(ValueError, match="same_as must be one of"):
        native.register_activation(_Swish, "swish")


def test_espnet_swish_is_registered():
    """The ESPnet adapters declare ESPnet's Conformer activation (Swish) equal to silu."""
    from espnet.nets.pytorch_backend.conformer.swish import Swish

    import espnet_omnirouter.encoders  # noqa: F401

    assert native.activation_code(Swish()) == native.ACT_SILU


def test_bad_activation_code_is_an_error():
    assert native.available(), native.why_not
    w = torch.randn(2, 8, 16)
    with pytest.raises(ValueError, match="act must be"):
        native.experts(torch.randn(4, 8), None, torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1),
                       native.pack(w), torch.zeros(2, 16), native.pack(w.transpose(1, 2)), torch.zeros(2, 8),
                       torch.relu, act=3)
    with pytest.raises(ValueError, match="act must be"):
        native.moe_slot(torch.randn(4, 8), None, torch.randn(2, 8), 1, native.pack(w), torch.zeros(2, 16),
                        native.pack(w.transpose(1, 2)), torch.zeros(2, 8), native.ACT_NONE)
