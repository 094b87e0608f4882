"""MoE core against a slow per-frame reference written here."""
import math

import pytest
import torch

from espnet_omnirouter.moe import (
    Experts,
    MoEFeedForward,
    Router,
    load_balance_loss,
    moe_aux_losses,
    moe_layer_stats,
    router_z_loss,
    usage_stats,
)
from espnet_omnirouter.moe.losses import expert_fractions

D, H, E = 8, 16, 4


def make_layer(top_k=1, capacity_factor=None, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    router = Router(D, E, top_k=top_k)
    # Larger router weights than the default init so that routing is far from uniform.
    torch.nn.init.normal_(router.weight, std=1.0)
    experts = Experts(E, D, H, torch.nn.ReLU(), dropout_rate=0.0)
    return MoEFeedForward(router, experts, capacity_factor=capacity_factor).to(dtype)


def reference(layer, x, mask):
    """Per-frame loop: softmax gate of each chosen expert times that expert's FFN.

    Capacity rule: assignments in the order (choice, frame), earlier first; an expert
    takes at most ``capacity`` of them.
    """
    w, ex = layer.router.weight, layer.experts
    flat, valid = x.reshape(-1, D), mask.reshape(-1)
    frames = [n for n in range(flat.shape[0]) if valid[n]]
    probs = {n: torch.softmax(w @ flat[n], dim=0) for n in frames}
    choices = {n: torch.topk(probs[n], layer.router.top_k).indices.tolist() for n in frames}
    capacity = layer.capacity(len(frames))
    taken = [0] * E
    kept = set()
    for j in range(layer.router.top_k):
        for n in frames:
            e = choices[n][j]
            if capacity is None or taken[e] < capacity:
                taken[e] += 1
                kept.add((n, j))
    out = []
    for n in range(flat.shape[0]):
        y = torch.zeros(D, dtype=x.dtype)
        if valid[n]:
            for j, e in enumerate(choices[n]):
                if (n, j) in kept:
                    h = torch.relu(flat[n] @ ex.w1[e] + ex.b1[e])
                    y = y + probs[n][e] * (h @ ex.w2[e] + ex.b2[e])
        out.append(y)
    return torch.stack(out).reshape(x.shape), len(frames) * layer.router.top_k - len(kept)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # grouped-mm and per-slice paths
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_layer_matches_per_frame_reference(top_k, capacity_factor, dtype):
    layer = make_layer(top_k, capacity_factor, dtype).train()
    x = torch.randn(3, 11, D, dtype=dtype, requires_grad=True)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    y = layer(x, mask)
    y_ref, dropped_ref = reference(layer, x, mask)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert int(layer.last.dropped) == dropped_ref
    if capacity_factor is not None:
        assert dropped_ref > 0  # the capacity case really drops something
    grad = torch.randn_like(y)
    params = [x, layer.router.weight, *layer.experts.parameters()]
    g = torch.autograd.grad(y, params, grad)
    g_ref = torch.autograd.grad(y_ref, params, grad)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padded_frames_get_zero_and_do_not_change_routing():
    layer = make_layer().eval()
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = layer(x, mask)
    assert torch.all(y[0, 3:] == 0)
    record = layer.last
    x2 = x.clone()
    x2[0, 3:] = 1e3  # garbage in the padding
    y2 = layer(x2, mask)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(record.routing.probs, layer.last.routing.probs)
    assert record.routing.expert.shape[0] == int(mask.sum())


def test_capacity_is_training_only():
    layer = make_layer(capacity_factor=0.25).eval()
    layer(torch.randn(2, 9, D))
    assert int(layer.last.dropped) == 0
    layer.train()
    layer(torch.randn(2, 9, D))
    assert int(layer.last.dropped) > 0


def test_load_balance_loss_hand_computed():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    expert = probs.argmax(1, keepdim=True)
    # f = [3/4, 1/4]; P = [2.4/4, 1.6/4]; E * sum f P = 2 * (0.75 * 0.6 + 0.25 * 0.4)
    assert load_balance_loss(probs, expert).item() == pytest.approx(2 * (0.75 * 0.6 + 0.25 * 0.4))
    uniform = torch.full((6, 3), 1 / 3)
    assert load_balance_loss(uniform, torch.tensor([[0], [1], [2]] * 2)).item() == pytest.approx(1.0)


def test_router_z_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp: log 2 and log 4
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected)


def test_losses_ignore_padded_frames():
    layer = make_layer().train()
    x = torch.randn(2, 6, D)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    layer(x, mask)
    a = {k: v.item() for k, v in moe_aux_losses([layer.last]).items()}
    stats_a = {k: v.item() for k, v in usage_stats(layer.last).items()}
    x[0, 4:] = torch.randn(2, D) * 100
    layer(x, mask)
    b = {k: v.item() for k, v in moe_aux_losses([layer.last]).items()}
    stats_b = {k: v.item() for k, v in usage_stats(layer.last).items()}
    assert a == pytest.approx(b)
    assert stats_a == pytest.approx(stats_b)
    # And they equal the losses of the real frames alone.
    layer(x[mask].unsqueeze(0))
    c = {k: v.item() for k, v in moe_aux_losses([layer.last]).items()}
    assert a == pytest.approx(c)


def test_expert_fractions_count_like_bincount():
    expert = torch.tensor([[3, 0, 3, 3, 1], [2, 2, 2, 2, 2]])
    for row in expert:
        expected = torch.bincount(row, minlength=E).float() / row.numel()
        torch.testing.assert_close(expert_fractions(row, E), expected)
    torch.testing.assert_close(expert_fractions(expert, E)[1], torch.tensor([0.0, 0.0, 1.0, 0.0]))


@pytest.mark.parametrize("same_frames", [True, False])
def test_several_layers_equal_layer_by_layer(same_frames):
    """moe_aux_losses / moe_layer_stats over layers (computed batched when the layers routed
    the same frames) equal the per-layer losses and statistics, gradients included."""
    layers = [make_layer(top_k=2, capacity_factor=1.0, seed=s).train() for s in range(3)]
    x = torch.randn(2, 6, D)
    masks = [torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)] * 3
    if not same_frames:
        masks[1] = torch.ones(2, 6, dtype=torch.bool)
    for layer, mask in zip(layers, masks):
        layer(x, mask)
    records = [layers[0].last, None, layers[1].last, layers[2].last]  # None: a skipped layer
    ran = [r for r in records if r is not None]
    weights = [layer.router.weight for layer in layers]
    aux = moe_aux_losses(records)
    lb = torch.stack([load_balance_loss(r.routing.probs, r.routing.expert) for r in ran]).mean()
    z = torch.stack([router_z_loss(r.routing.logits) for r in ran]).mean()
    for got, want in ((aux["lb"], lb), (aux["z"], z)):
        torch.testing.assert_close(got, want)
        for a, b in zip(
            torch.autograd.grad(got, weights, retain_graph=True), torch.autograd.grad(want, weights, retain_graph=True)
        ):
            torch.testing.assert_close(a, b)
    stats = moe_layer_stats(records)
    assert len(stats) == 3 * len(records)
    for i, record in enumerate(records):
        want = {k: 0.0 for k in ("entropy", "max_frac", "drop_frac")} if record is None else usage_stats(record)
        for k, v in want.items():
            torch.testing.assert_close(stats[f"moe{i}_{k}"], torch.as_tensor(v, dtype=torch.float32))
    assert any(stats[f"moe{i}_drop_frac"] > 0 for i in (0, 2, 3))  # the capacity really dropped


def test_router_is_fp32_under_autocast():
    layer = make_layer()
    x = torch.randn(2, 4, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert layer.last.routing.logits.dtype == torch.float32
    assert layer.last.routing.probs.dtype == torch.float32
    assert y.shape == x.shape


def test_jitter_only_in_training():
    router = Router(D, E, jitter=0.5)
    x = torch.randn(20, D)
    router.eval()
    torch.testing.assert_close(router(x).logits, router(x).logits)
    router.train()
    assert not torch.allclose(router(x).logits, router(x).logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=D, num_experts=0), "num_experts"),
        (dict(d_model=D, num_experts=2, top_k=3), "top_k"),
        (dict(d_model=D, num_experts=2, jitter=-0.1), "router_jitter"),
    ],
)
def test_router_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Router(**kwargs)


def test_negative_capacity_error():
    with pytest.raises(ValueError, match="capacity_factor"):
        MoEFeedForward(Router(D, E), Experts(E, D, H, torch.nn.ReLU()), capacity_factor=-1.0)


def test_mask_shape_error():
    layer = make_layer()
    with pytest.raises(ValueError, match="padding mask"):
        layer(torch.randn(2, 5, D), torch.ones(2, 4, dtype=torch.bool))


def test_deepcopy_and_pickle_after_a_training_forward():
    """``last`` holds graph tensors; copies (EMA, averaging, torch.save) must still work."""
    import copy
    import io

    router = Router(D, E, top_k=1)
    layers = torch.nn.ModuleList(
        MoEFeedForward(router, Experts(E, D, H, torch.nn.ReLU(), 0.0), own_router=i == 0) for i in range(2)
    )
    x = torch.randn(2, 5, D, requires_grad=True)
    y = layers[1](layers[0](x))
    assert layers[0].last is not None and layers[0].last.routing.probs.grad_fn is not None
    copied = copy.deepcopy(layers)
    assert all(m.last is None and m.pad_mask is None for m in copied)
    assert layers[0].last is not None  # the original keeps its step's routing
    assert copied[0].router is copied[1].router  # a shared router stays shared in the copy
    assert copied[0].router is not layers[0].router
    torch.testing.assert_close(copied[1](copied[0](x)), y)
    buf = io.BytesIO()
    torch.save(layers, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded[1](loaded[0](x)), y)
