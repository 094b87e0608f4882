"""The native CPU path of Duo slots (``DuoFeedForward._run`` -> ``native.duo_slot``): outputs and
routing records equal to the PyTorch dispatch and the per-frame reference for every policy, with
and without padding; one C call per slot; where it does not run; weights that change."""
import pytest
import torch

from espnet_omnirouter.moe import DuoFeedForward, DuoPolicy, PathExperts, Router, native

from test_duo import D, POLICIES, chosen_paths, reference, slot

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.why_not}")

ALL_POLICIES = POLICIES + [DuoPolicy("fixed", path=0), DuoPolicy("fixed", path=2)]


def pytorch_path(s, x, valid):
    """The slot's output and record on the PyTorch dispatch (the native plan refused)."""
    s._native_plan = lambda flat, index: None
    try:
        return s(x, valid), s.last.routing
    finally:
        del s._native_plan


def calls(monkeypatch):
    """Count the C calls of Duo slots."""
    seen = []
    original = native.duo_slot
    monkeypatch.setattr(native, "duo_slot", lambda *a, **k: seen.append(1) or original(*a, **k))
    return seen


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: f"{p.kind}-{p.path if p.kind == 'fixed' else p.cost_bias}")
@pytest.mark.parametrize("padded", [False, True])
def test_native_slot_equals_the_pytorch_path_and_the_reference(policy, padded, monkeypatch):
    s = slot(policy=policy).eval()
    torch.nn.init.normal_(s.router.weight)  # a router that uses every path
    x = torch.randn(3, 7, D)
    valid = torch.arange(7) < torch.tensor([7, 5, 2]).unsqueeze(1) if padded else torch.ones(3, 7, dtype=torch.bool)
    seen = calls(monkeypatch)
    gen = policy.generator = torch.Generator() if policy.kind == "random" else None
    with torch.inference_mode():
        if gen is not None:
            gen.manual_seed(0)
        y = s(x, valid if padded else None)
        record = s.last.routing
        assert seen == [1]
        if gen is not None:
            gen.manual_seed(0)
        want, want_record = pytorch_path(s, x, valid if padded else None)
    assert torch.allclose(y, want, atol=1e-5)
    assert torch.equal(record.expert, want_record.expert) and record.expert.shape == (int(valid.sum()), 1)
    for name in ("gate", "probs", "logits"):
        assert torch.allclose(getattr(record, name), getattr(want_record, name), atol=1e-6), name
    s.last.routing = record
    paths = chosen_paths(s, valid)
    assert torch.allclose(y[valid], reference(s, x, paths.clamp(min=0))[valid], atol=1e-5)
    assert (y[~valid] == 0).all()
    if policy.kind == "learned":  # the C router's choice is the PyTorch argmax of the biased logits
        r = s.router(x[valid])
        assert torch.equal(paths[valid], (r.logits - policy.cost_bias * s.costs).argmax(-1))


def test_native_slot_runs_no_pytorch_matmul(monkeypatch):
    """Routing, the split by path, both GEMMs of each width and the scatter are the one C call."""
    s = slot(policy=DuoPolicy("learned", cost_bias=0.3)).eval()
    torch.nn.init.normal_(s.router.weight)
    x = torch.randn(2, 40, D)

    def forbidden(*args, **kwargs):
        raise AssertionError("a PyTorch operator of the dispatch ran")

    for name in ("addmm", "mm", "matmul", "sort", "baddbmm"):
        monkeypatch.setattr(torch, name, forbidden)
    seen = calls(monkeypatch)
    with torch.no_grad():
        s(x)
    assert seen == [1] and len(set(s.last.routing.expert[:, 0].tolist())) == 3


def test_all_big_is_the_dense_ffn():
    """The fixed big policy computes the big path's FFN (the encoder's own) on every frame."""
    s = slot(policy=DuoPolicy("fixed", path=0)).eval()
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        y = s(x)
        want = s.experts.paths["0"].dense(x.reshape(-1, D)).view(x.shape)
    assert torch.allclose(y, want, atol=1e-5)


@pytest.mark.parametrize("case", ["training", "grad", "impl", "relu6", "native_off"])
def test_where_the_native_path_does_not_run(case, monkeypatch):
    s = slot(policy=DuoPolicy("learned")).eval()
    if case == "relu6":  # an activation the C GEMM does not know
        s = DuoFeedForward(Router(D, 3), PathExperts(D, [32, 4, 0], torch.nn.ReLU6())).eval()
    seen = calls(monkeypatch)
    x = torch.randn(2, 5, D)
    if case == "training":
        s.train()
    if case == "impl":
        s.experts.paths["1"].impl = "loop"
    if case == "native_off":
        monkeypatch.setattr(native, "available", lambda: False)
    with torch.set_grad_enabled(case in ("training", "grad")):
        y = s(x)
    assert seen == [] and y.shape == x.shape


def test_the_plan_follows_weights_that_change():
    """An in-place edit, a load_state_dict and a replaced storage each reach the next forward."""
    s = slot(policy=DuoPolicy("fixed", path=1)).eval()
    x = torch.randn(2, 6, D)
    small = s.experts.paths["1"]
    other = slot(seed=5).eval().state_dict()
    for change in (lambda: small.w1.mul_(2.0), lambda: small.b2.add_(1.0), lambda: s.load_state_dict(other),
                   lambda: setattr(small.w2, "data", torch.randn_like(small.w2))):
        with torch.no_grad():
            s(x)
            change()
            y = s(x)
        assert torch.allclose(y, reference(s, x, torch.full((2, 6), 1)), atol=1e-5)


def test_a_path_out_of_range_is_an_error():
    s = slot().eval()
    with torch.no_grad():
        plan = s._native_plan(torch.randn(4, D), None)
        with pytest.raises(ValueError, match=r"path outside 0..2"):
            native.duo_slot(torch.randn(4, D), None, plan, path=torch.tensor([0, 1, 3, 2]))
        with pytest.raises(ValueError, match="a fixed path in 0..2"):
            native.duo_slot(torch.randn(4, D), None, plan, fixed=3)
