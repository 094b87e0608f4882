"""Duo adaptive compute: heterogeneous paths in the MoE core, routing modes, budget loss,
Duo encoders, decoding policies and their errors."""
import math
import os

import pytest
import torch
from espnet2.tasks.asr import ASRTask

import espnet_omnirouter  # noqa: F401
from espnet_omnirouter.encoders import DuoConformerEncoder, DuoTransformerEncoder
from espnet_omnirouter.inference.duo import DuoDecodeConfig, apply_duo_policy, slot_policies
import itertools

from espnet_omnirouter.inference.duo_search import downgrades, greedy_descent, pattern_cost
from espnet_omnirouter.moe import PATHS, DuoFeedForward, DuoPolicy, Padding, PathExperts, Router, budget_loss, duo_stats
from espnet_omnirouter.moe.duo import duo_expected_compute
from espnet_omnirouter.moe import native
from espnet_omnirouter.moe.experts import Experts

from test_encoders import CONFORMER, EXACT_CONFORMER, SMALL, build_args
from tiny_asr_data import ROOT

D, BIG, SMALL_UNITS = 8, 32, 4


def slot(seed=0, policy=None, dropout=0.0):
    torch.manual_seed(seed)
    s = DuoFeedForward(Router(D, 3), PathExperts(D, [BIG, SMALL_UNITS, 0], torch.nn.ReLU(), dropout))
    if policy is not None:
        s.policy = policy
    return s


def reference(s, x, paths):
    """Per-frame reference: frame i through path paths[i] (ESPnet's FFN formula), 0 for skip."""
    rows = []
    for frame, path in zip(x.reshape(-1, D), paths.reshape(-1).tolist()):
        if path == 2:
            rows.append(torch.zeros(D))
            continue
        e = s.experts.paths[str(path)]
        rows.append(torch.relu(frame @ e.w1[0] + e.b1[0]) @ e.w2[0] + e.b2[0])
    return torch.stack(rows).view(x.shape)


def chosen_paths(s, valid):
    """[B, T] path of each frame from the slot's last record (-1 on padding)."""
    out = torch.full(valid.shape, -1, dtype=torch.long)
    out[valid] = s.last.routing.expert[:, 0]
    return out


POLICIES = [
    DuoPolicy("random", probs=(0.4, 0.3, 0.3)),
    DuoPolicy("learned"),
    DuoPolicy("learned", cost_bias=0.5),
    DuoPolicy("fixed", path=1),
    DuoPolicy("fixed", path=torch.tensor([0, 2, 1])),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.kind}-{p.path if p.kind == 'fixed' else p.cost_bias}")
@pytest.mark.parametrize("training", [False, True])
def test_each_frame_gets_its_paths_function(policy, training):
    s = slot(policy=policy)
    s.train(training)
    x = torch.randn(3, 7, D)
    valid = torch.arange(7) < torch.tensor([7, 5, 2]).unsqueeze(1)
    y = s(x, valid)
    paths = chosen_paths(s, valid)
    expect = reference(s, x, paths.clamp(min=0))
    assert torch.allclose(y[valid], expect[valid], atol=1e-5)
    assert (y[~valid] == 0).all()
    if isinstance(policy.path, torch.Tensor):
        assert (paths[valid] == policy.path.unsqueeze(1).expand(3, 7)[valid]).all()
    elif policy.kind == "fixed":
        assert (paths[valid] == policy.path).all()
    elif policy.kind == "learned":
        r = s.router(x[valid])
        assert (paths[valid] == (r.logits - policy.cost_bias * s.costs).argmax(-1)).all()


def test_learned_training_is_straight_through():
    """Forward = the hard choice's output, gate 1; backward reaches the router through every path."""
    s = slot(policy=DuoPolicy("learned"))
    x = torch.randn(2, 9, D)
    s.train()
    y = s(x)
    s.eval()
    with torch.no_grad():
        y_eval = s(x)
    assert torch.allclose(y.detach(), y_eval, atol=1e-6)  # loop vs padded GEMMs: rounding only
    s.train()
    y = s(x)
    (y * torch.randn_like(y)).sum().backward()
    assert s.router.weight.grad is not None and s.router.weight.grad.abs().sum() > 0
    # d loss / d prob_p = <g, FFN_p(x)>: check against autograd of the soft mixture at the hard point
    s.zero_grad()
    g = torch.randn_like(y)
    s.train()
    (s(x) * g).sum().backward()
    ste = s.router.weight.grad.clone()
    s.zero_grad()
    flat = x.reshape(-1, D)
    probs = s.router(flat).probs
    outs = [reference(s, x, torch.full((2, 9), p)).reshape(-1, D) for p in range(3)]
    hard = torch.nn.functional.one_hot(probs.argmax(-1), 3).float()
    weights = hard + probs - probs.detach()
    mix = sum(weights[:, p : p + 1] * outs[p] for p in range(3))
    (mix * g.reshape(-1, D)).sum().backward()
    assert torch.allclose(ste, s.router.weight.grad, atol=1e-5)


@pytest.mark.parametrize("path", [0, 1, 2])
def test_one_fixed_path_runs_without_the_dispatch(path, monkeypatch):
    s = slot(policy=DuoPolicy("fixed", path=path))
    counts = count_rows(s)
    x = torch.randn(2, 6, D)
    valid = torch.arange(6) < torch.tensor([6, 4]).unsqueeze(1)

    def no_sort(*args, **kwargs):
        raise AssertionError("the dispatch ran (torch.sort)")

    monkeypatch.setattr(torch, "sort", no_sort)
    with torch.no_grad():
        y = s(x, valid)
    monkeypatch.undo()
    assert counts == {key: (10 if int(key) == path else 0) for key in ("0", "1")}
    assert torch.allclose(y, reference(s, x, torch.full((2, 6), path)) * valid.unsqueeze(-1), atol=1e-6)
    assert (s.last.routing.expert[:, 0] == path).all() and s.last.routing.expert.shape[0] == 10


def count_rows(s):
    """Wrap each path's entry points (``combine`` with autograd, ``dense`` without) to count
    the rows it receives."""
    counts = {key: 0 for key in s.experts.paths}

    def wrap(key, fn, rows_arg):
        def counted(*args):
            counts[key] += args[rows_arg].shape[0]
            return fn(*args)

        return counted

    for key, experts in s.experts.paths.items():
        experts.combine = wrap(key, experts.combine, 1)
        experts.dense = wrap(key, experts.dense, 0)
    return counts


@pytest.mark.parametrize("grad", [False, True])
def test_skip_rows_cost_no_matmul(grad, monkeypatch):
    """On the PyTorch dispatch (the native CPU path: test_duo_native.py)."""
    monkeypatch.setattr(native, "available", lambda: False)
    s = slot(policy=DuoPolicy("random", probs=(0.2, 0.3, 0.5)))
    s.eval()
    counts = count_rows(s)
    entries = {"combine": [], "dense": []}
    for key, experts in s.experts.paths.items():
        for name in entries:
            fn = getattr(experts, name)
            setattr(experts, name, lambda *a, _fn=fn, _name=name: entries[_name].append(1) or _fn(*a))
    matmul_rows = []
    for name in ("addmm", "baddbmm"):
        original = getattr(torch, name)

        def spy(bias, a, *args, _original=original, **kwargs):
            matmul_rows.append(a.shape[-2] * (a.shape[0] if a.dim() == 3 else 1))
            return _original(bias, a, *args, **kwargs)

        setattr(torch, f"_duo_test_{name}", original)
        setattr(torch, name, spy)
    x = torch.randn(4, 50, D, requires_grad=grad)
    valid = torch.arange(50) < torch.tensor([50, 40, 30, 20]).unsqueeze(1)
    try:
        with torch.set_grad_enabled(grad):
            s(x, valid)
    finally:
        for name in ("addmm", "baddbmm"):
            setattr(torch, name, getattr(torch, f"_duo_test_{name}"))
    paths = s.last.routing.expert[:, 0]
    assert counts == {"0": int((paths == 0).sum()), "1": int((paths == 1).sum())}
    assert [len(e) for e in entries.values()] == ([0, 2] if not grad else [2, 0])  # combine with autograd only
    # two matmuls per frame on a computed path (first and second layer); none for a skip frame
    assert sum(matmul_rows) == 2 * int((paths != 2).sum()) and (paths == 2).sum() > 0


def test_a_path_without_frames_is_not_called_at_inference_but_takes_part_in_backward():
    s = slot(policy=DuoPolicy("random", probs=(1.0, 0.0, 0.0)))
    counts = count_rows(s)
    with torch.no_grad():
        s(torch.randn(2, 5, D))
    assert counts["1"] == 0
    s.train()
    s(torch.randn(2, 5, D)).sum().backward()
    small = s.experts.paths["1"]
    assert all(p.grad is not None and (p.grad == 0).all() for p in small.parameters())


@pytest.mark.parametrize("probs", [(1 / 3, 1 / 3, 1 / 3), (0.6, 0.1, 0.3), (0.0, 0.5, 0.5)])
def test_random_routing_hits_its_probabilities(probs):
    n = 20000
    s = slot(policy=DuoPolicy("random", probs=probs, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        s(torch.randn(1, n, D))
    frac = torch.bincount(s.last.routing.expert[:, 0], minlength=3).double() / n
    for p, f in zip(probs, frac.tolist()):
        bound = 5 * math.sqrt(p * (1 - p) / n)  # 5 standard deviations of a binomial fraction
        assert abs(f - p) <= bound, (probs, frac)


def test_random_routing_is_reproducible_with_its_generator():
    def paths(seed):
        s = slot(policy=DuoPolicy("random", probs=(0.3, 0.3, 0.4), generator=torch.Generator().manual_seed(seed)))
        with torch.no_grad():
            s(torch.randn(1, 100, D))
        return s.last.routing.expert[:, 0]

    assert torch.equal(paths(3), paths(3)) and not torch.equal(paths(3), paths(4))


@pytest.mark.parametrize("budget", [0.1, 0.9])
def test_budget_loss_moves_the_mean_compute_toward_the_budget(budget):
    s = slot(policy=DuoPolicy("learned"))
    s.train()
    # A constant component, as after ESPnet's LayerNorm (its bias): the router has no bias of its own.
    x = torch.randn(4, 40, D) + 1.0
    opt = torch.optim.Adam(s.router.parameters(), lr=0.02)

    def compute():
        """(expected compute of the router's probabilities, compute of the paths taken)"""
        with torch.no_grad():
            s(x)
        return float(duo_expected_compute([s.last], s.costs)), float(duo_stats([s.last], s.costs)["duo_compute"])

    start = compute()
    assert abs(start[0] - (1 + SMALL_UNITS / BIG) / 3) < 0.05  # near-uniform initial router
    for _ in range(30):
        s(x)
        loss = budget_loss([s.last], s.costs, budget)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = compute()
    assert abs(end[0] - budget) < 0.05, (start, end, budget)
    assert abs(end[1] - budget) < 0.15, (start, end, budget)  # the paths taken follow


def test_padded_frames_are_never_routed():
    s = slot(policy=DuoPolicy("learned"))
    seen = []
    s.router.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    x = torch.randn(3, 10, D)
    x[1, 6:] = float("nan")  # padding content must not matter
    x[2, 3:] = float("nan")
    valid = torch.arange(10) < torch.tensor([10, 6, 3]).unsqueeze(1)
    s.train()
    y = s(x, Padding.from_mask(valid))
    assert seen == [19] and s.last.routing.probs.shape[0] == 19
    assert torch.isfinite(y).all() and (y[~valid] == 0).all()
    stats = duo_stats([s.last], s.costs)
    assert abs(sum(float(stats[f"duo0_{p}"]) for p in PATHS) - 1) < 1e-6
    assert torch.isfinite(budget_loss([s.last], s.costs, 0.5))


def test_stats_keys_and_compute():
    s = slot(policy=DuoPolicy("fixed", path=torch.tensor([0, 1])))
    with torch.no_grad():
        s(torch.randn(2, 10, D))
    stats = duo_stats([s.last, None], s.costs)
    assert sorted(stats) == sorted([f"duo{i}_{p}" for i in range(2) for p in PATHS] + ["duo_compute"])
    assert float(stats["duo0_big"]) == float(stats["duo0_small"]) == 0.5
    assert abs(float(stats["duo_compute"]) - (1 + SMALL_UNITS / BIG) / 2) < 1e-6  # the slot that ran


# ---------------------------------------------------------------------------------------------
# Encoders

DUO_CONF = dict(CONFORMER, input_layer="linear")


@pytest.mark.parametrize("cls, kwargs, slots", [(DuoConformerEncoder, DUO_CONF, 6), (DuoTransformerEncoder, dict(SMALL, input_layer="linear"), 3)])
@pytest.mark.parametrize("router", ["slot", "shared"])
def test_encoder_slots_and_router_ownership(cls, kwargs, slots, router):
    enc = cls(20, duo_router=router, **kwargs)
    assert len(enc.duo_slots()) == slots
    keys = [k for k in enc.state_dict() if "router" in k]
    assert len(keys) == (1 if router == "shared" else slots)
    widths = enc.duo_slots()[0].experts.widths
    assert widths == [kwargs["linear_units"], kwargs["linear_units"] // 16, 0]
    # stage 1 (random routing): routers frozen; learned: trainable
    assert not any(p.requires_grad for p in enc.duo_router_parameters())
    learned = cls(20, duo_router=router, duo_routing="learned", **kwargs)
    assert all(p.requires_grad for p in learned.duo_router_parameters())


def test_all_big_equals_the_dense_encoder():
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    torch.manual_seed(0)
    dense = ConformerEncoder(20, **EXACT_CONFORMER).eval()  # (ESPnet's convolution module would mix in padding)
    duo = DuoConformerEncoder(20, **EXACT_CONFORMER).eval()
    state = dense.state_dict()
    for name in duo.duo_names:
        for a, b in (("w_1", "1"), ("w_2", "2")):
            w, bias = state.pop(f"{name}.{a}.weight"), state.pop(f"{name}.{a}.bias")
            state[f"{name}.experts.paths.0.w{b}"] = w.t().unsqueeze(0)
            state[f"{name}.experts.paths.0.b{b}"] = bias.unsqueeze(0)
    missing, unexpected = duo.load_state_dict(state, strict=False)
    assert not unexpected and all("router" in k or "paths.1" in k for k in missing)
    apply_duo_policy(duo, DuoDecodeConfig("big"))
    x, lengths = torch.randn(2, 30, 20), torch.tensor([30, 17])
    with torch.no_grad():
        a, la, _ = dense(x, lengths)
        b, lb, _ = duo(x, lengths)
    valid = torch.arange(a.shape[1]) < la.unsqueeze(1)  # (padding frames: 0 for Duo, FFN(x) for dense)
    assert torch.equal(la, lb) and torch.allclose(a[valid], b[valid], atol=1e-5)


def test_strict_reload_of_a_trained_duo_model(tmp_path):
    args = build_args(os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer_router.yaml"), tmp_path)
    model = ASRTask.build_model(args)
    model.train()
    speech, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    text, text_lengths = torch.tensor([[2, 3, 4], [3, 2, -1]]), torch.tensor([3, 2])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss, stats, _ = model(speech, lengths, text, text_lengths)
    loss.backward()
    opt.step()
    assert "duo_budget_loss" in stats and "duo_compute" in stats and "duo0_skip" in stats
    state = model.state_dict()
    fresh = ASRTask.build_model(args)
    fresh.load_state_dict(state, strict=True)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_shared_router_stage2_starts_from_a_per_slot_stage1(tmp_path):
    """conf/train_asr_duo_conformer_router_shared.yaml's command: the stage-1 checkpoint's unused
    per-slot routers are filtered out by ESPnet's --ignore_init_mismatch; without it they are refused."""
    from espnet2.torch_utils.load_pretrained_model import load_pretrained_model

    stage1 = ASRTask.build_model(build_args(os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer.yaml"), tmp_path))
    torch.save(stage1.state_dict(), tmp_path / "stage1.pth")
    args = build_args(os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer_router.yaml"), tmp_path)
    args.encoder_conf["duo_router"] = "shared"
    shared = ASRTask.build_model(args)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_pretrained_model(str(tmp_path / "stage1.pth"), shared, ignore_init_mismatch=False)
    router = {k: v.clone() for k, v in shared.state_dict().items() if "router" in k}
    load_pretrained_model(str(tmp_path / "stage1.pth"), shared, ignore_init_mismatch=True)
    state = shared.state_dict()
    assert len(router) == 1 and all(torch.equal(state[k], v) for k, v in router.items())
    for key, value in stage1.state_dict().items():
        if "router" not in key:
            assert torch.equal(state[key], value), key


def test_frozen_backbone_trains_only_the_routers(tmp_path):
    args = build_args(os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer_router.yaml"), tmp_path)
    model = ASRTask.build_model(args)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("router" in n for n in trainable)
    model.train()
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert batch_norms and not any(m.training for m in batch_norms)
    before = {n: p.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss, _, _ = model(torch.randn(2, 8000), torch.tensor([8000, 6000]), torch.tensor([[2, 3], [3, 4]]), torch.tensor([2, 2]))
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != ("router" in n), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n


# ---------------------------------------------------------------------------------------------
# Bad values: clear errors naming the key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(duo_train_probs=[0.5, 0.4, 0.2]), r"encoder_conf\.duo_train_probs must be 3 probabilities .* sum to 1"),
        (dict(duo_train_probs=[0.5, 0.5]), r"encoder_conf\.duo_train_probs must be 3 probabilities"),
        (dict(duo_train_probs=[1.2, -0.2, 0.0]), r"encoder_conf\.duo_train_probs must be 3 probabilities >= 0"),
        (dict(duo_train_probs="0.3,0.3,0.4"), r"encoder_conf\.duo_train_probs must be a list of numbers, or null"),
        (dict(duo_router="omni"), r"encoder_conf\.duo_router must be one of \['slot', 'shared'\], got 'omni'"),
        (dict(duo_routing="oracle"), r"encoder_conf\.duo_routing must be one of \['random', 'learned'\]"),
        (dict(duo_small_units=32), r"encoder_conf\.duo_small_units must be in \[1, linear_units=32\), got 32"),
        (dict(duo_small_units=4.0), r"encoder_conf\.duo_small_units must be an int, or null, got float"),
        (dict(duo_layers=[5]), r"encoder_conf\.duo_layers must be distinct block indices in \[0, 2\]"),
        (dict(duo_routing="learned", duo_train_probs=[1.0, 0.0, 0.0]), r"duo_train_probs is for duo_routing: random"),
        (dict(duo_smal_units=4), r"has no key encoder_conf\.duo_smal_units \(did you mean 'duo_small_units'\?\)"),
    ],
)
def test_encoder_errors_name_the_key(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        DuoConformerEncoder(20, **dict(DUO_CONF, **kwargs))


def test_duo_macaron_on_a_transformer_is_rejected():
    with pytest.raises(ValueError, match=r"encoder_conf\.duo_macaron is for encoders with a macaron FFN \(duo_conformer, duo_e_branchformer\)"):
        DuoTransformerEncoder(20, **dict(SMALL, duo_macaron=True))


@pytest.mark.parametrize(
    "conf, message",
    [
        (dict(duo_budget=1.5), r"model_conf\.duo_budget must be in \[0, 1\]"),
        (dict(duo_budget=-0.1), r"model_conf\.duo_budget must be in \[0, 1\]"),
        (dict(duo_budget="0.5"), r"model_conf\.duo_budget must be a number, or null, got str '0.5' \(a quoted number"),
        (dict(duo_budget_weight=-1.0), r"model_conf\.duo_budget_weight must be >= 0"),
        (dict(duo_freeze_backbone="yes"), r"model_conf\.duo_freeze_backbone must be true or false"),
    ],
)
def test_model_errors_name_the_key(conf, message, tmp_path):
    args = build_args(os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer_router.yaml"), tmp_path)
    args.model_conf.update(conf)
    with pytest.raises((TypeError, ValueError), match=message):
        ASRTask.build_model(args)


def test_budget_needs_learned_routing_and_a_duo_encoder(tmp_path):
    args = build_args(os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer.yaml"), tmp_path)
    args.model_conf.update(duo_budget=0.5)
    with pytest.raises(ValueError, match=r"model_conf\.duo_budget and duo_freeze_backbone .* need encoder_conf\.duo_routing: learned"):
        ASRTask.build_model(args)
    args = build_args(os.path.join(ROOT, "conf", "tiny", "train_asr_switch_conformer.yaml"), tmp_path)
    args.model_conf.update(duo_budget=0.5)
    with pytest.raises(ValueError, match=r"model_conf\.duo_budget is for duo_\* encoders"):
        ASRTask.build_model(args)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(policy="fastest"), r"duo_policy must be one of \['big', 'small', 'static', 'random', 'learned'\]"),
        (dict(policy="static"), r"duo_pattern is for duo_policy: static \(and needed by it\)"),
        (dict(policy="big", pattern="BBB"), r"duo_pattern is for duo_policy: static"),
        (dict(policy="static", pattern="BXS"), r"duo_pattern must be letters B \(big\), S \(small\), K \(skip\)"),
        (dict(policy="random"), r"duo_probs is for duo_policy: random \(and needed by it\)"),
        (dict(policy="random", probs=[0.5, 0.6, 0.0]), r"duo_probs must be 3 probabilities"),
        (dict(policy="big", cost_bias=0.5), r"duo_cost_bias is for duo_policy: learned"),
    ],
)
def test_decode_option_errors_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        DuoDecodeConfig(**options)


def test_pattern_of_the_wrong_length_names_the_slots():
    enc = DuoConformerEncoder(20, **DUO_CONF)
    with pytest.raises(ValueError, match=r"duo_pattern has 5 letters, the model has 6 Duo slots \(encoders\.0\.feed_forward_macaron, "):
        apply_duo_policy(enc, DuoDecodeConfig("static", pattern="BSKBS"))


def test_policies_per_slot():
    enc = DuoConformerEncoder(20, **DUO_CONF)
    assert [p.path for p in slot_policies(enc, DuoDecodeConfig("static", pattern="BSKKSB"))] == [0, 1, 2, 2, 1, 0]
    assert all(p.path == 1 for p in slot_policies(enc, DuoDecodeConfig("small")))
    assert all(p.path == 0 for p in slot_policies(enc, DuoDecodeConfig()))  # stage 1: default big
    learned = DuoConformerEncoder(20, duo_routing="learned", **DUO_CONF)
    assert all(p.kind == "learned" for p in slot_policies(learned, DuoDecodeConfig()))
    costs = enc.duo_costs()
    assert pattern_cost("BSKKSB", costs) == pytest.approx((2 + 2 * 2 / 32) / 6)
    assert DuoDecodeConfig("static", pattern="BSK").tag() == "static_BSK"
    assert DuoDecodeConfig("random", probs=[0.5, 0.25, 0.25]).tag() == "random_0.5-0.25-0.25"


def test_static_pattern_compute_is_what_the_slots_report():
    enc = DuoConformerEncoder(20, **DUO_CONF).eval()
    apply_duo_policy(enc, DuoDecodeConfig("static", pattern="BSKBSK"))
    with torch.no_grad():
        enc(torch.randn(2, 30, 20), torch.tensor([30, 20]))
    stats = duo_stats(enc.duo_records(), enc.duo_costs())
    assert float(stats["duo_compute"]) == pytest.approx(pattern_cost("BSKBSK", enc.duo_costs()))


# ---------------------------------------------------------------------------------------------
# Pattern search (oracle study)

COSTS = [1.0, 1 / 16, 0.0]


def test_downgrades_are_one_slot_cheaper():
    assert sorted(downgrades("BSK")) == sorted(["SSK", "KSK", "BKK"])
    assert downgrades("KK") == []


@pytest.mark.parametrize("seed", range(5))
def test_greedy_descent_meets_each_budget_and_is_near_the_exhaustive_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    penalty = torch.rand(4, 3, generator=g)  # loss of slot i on path p (big cheapest in loss)
    penalty[:, 0] = 0
    penalty[:, 2] += penalty[:, 1]

    calls = []

    def evaluate(patterns):
        calls.append(len(patterns))
        return [float(sum(penalty[i, "BSK".index(c)] for i, c in enumerate(p))) for p in patterns]

    budgets = [1.0, 0.75, 0.5, 0.25]
    found = greedy_descent(4, COSTS, budgets, evaluate)
    searched = sum(calls)
    every = ["".join(p) for p in itertools.product("BSK", repeat=4)]
    for b in budgets:
        pattern, loss = found[b]
        assert pattern_cost(pattern, COSTS) <= b + 1e-9
        assert loss == evaluate([pattern])[0]
        optimum = min(evaluate([p])[0] for p in every if pattern_cost(p, COSTS) <= b + 1e-9)
        assert loss <= optimum + 0.5 * float(penalty.max())  # greedy: close, not always optimal
    assert searched < len(every)  # fewer evaluations than exhaustive search (3 ** 4)


def test_greedy_descent_takes_downgrades_that_lower_the_loss():
    # Skipping slot 1 helps: found even at budget 1.0 (all-big is not the best pattern).
    def evaluate(patterns):
        return [sum({"B": 0.0, "S": 0.5, "K": 1.0}[c] for c in p) - (2.0 if p[1] == "K" else 0.0) for p in patterns]

    found = greedy_descent(3, COSTS, [1.0], evaluate)
    assert found[1.0] == ("BKB", -1.0)


# ---------------------------------------------------------------------------------------------
# RESULTS.md (stage 7) reports the compute of Duo decodings


def test_results_md_reports_duo_compute(tmp_path):
    import json
    import sys

    sys.path.insert(0, os.path.join(ROOT, "egs2", "TEMPLATE", "asr1", "pyscripts"))
    import show_results

    summary = {"Snt": 2, "Wrd": 4, "Corr": 3, "Sub": 1, "Del": 0, "Ins": 0, "Err": 25.0, "S.Err": 50.0}
    for tag, values in (("decode_duo_policystatic_duo_patternBSKB", [0.53, 0.53]), ("decode_dense", None)):
        d = tmp_path / tag / "test"
        (d / "score_wer").mkdir(parents=True)
        (d / "score_wer" / "summary.json").write_text(json.dumps(summary))
        (d / "logdir").mkdir()
        lines = ["INFO: other line"] + [f"INFO: Duo compute (relative to all-big): {v:.4f}" for v in values or []]
        (d / "logdir" / "asr_inference.1.log").write_text("\n".join(lines) + "\n")
    out = tmp_path / "RESULTS.md"
    assert show_results.main(["--exp", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "### Duo compute" in text
    assert "|decode_duo_policystatic_duo_patternBSKB/test|2|0.5300|" in text
    assert "decode_dense/test|2|" not in text.split("### Duo compute")[1]
