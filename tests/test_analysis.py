"""Routing-analysis metrics on routings whose answers are known (numpy only, no model)."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from espnet_omnirouter.analysis import (
    RoutingRecord,
    analyze_records,
    compute,
    metrics,
    split_gates,
    split_routing,
    split_routing_and_gates,
)
from espnet_omnirouter.moe import LayerRouting, Routing


def layers(*cols):
    return np.stack([np.asarray(c) for c in cols], axis=1)


def no_nan_load(path):
    def bad(name):
        raise AssertionError(f"{path}: {name} in JSON")

    with open(path) as f:
        return json.load(f, parse_constant=bad)


# ----------------------------------------------------------------------------- dependence
def test_identical_choices_give_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 8, size=5000)
    dep = metrics.dependence_matrices(layers(a, a, a, a))
    np.testing.assert_allclose(dep["cramers_v"], np.ones((4, 4)), atol=1e-12)
    np.testing.assert_allclose(dep["nmi"], np.ones((4, 4)), atol=1e-12)


def test_relabelled_copy_gives_one_but_raw_agreement_does_not():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 8, size=5000)
    perm = rng.permutation(8)
    while np.any(perm == np.arange(8)):  # a derangement: no expert keeps its index
        perm = rng.permutation(8)
    b = perm[a]
    assert metrics.cramers_v(a, b) == pytest.approx(1.0, abs=1e-12)
    assert metrics.nmi(a, b) == pytest.approx(1.0, abs=1e-12)
    agree = metrics.agreement_matrices(layers(a, b), 8)
    assert agree["agreement"][0][1] == 0.0
    assert agree["agreement_chance"][0][1] == pytest.approx(1 / 8, abs=0.02)


def test_unused_labels_do_not_change_v_or_nmi():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 3, size=2000)
    b = np.where(rng.random(2000) < 0.7, a, rng.integers(0, 3, size=2000))
    # The same choices with labels spread over 0..63 (61 experts never used).
    a2, b2 = np.array([5, 40, 63])[a], np.array([0, 17, 2])[b]
    assert metrics.cramers_v(a, b) == pytest.approx(metrics.cramers_v(a2, b2), abs=1e-12)
    assert metrics.nmi(a, b) == pytest.approx(metrics.nmi(a2, b2), abs=1e-12)


@pytest.mark.parametrize("k, n", [(4, 4000), (8, 20000)])
def test_independent_uniform_choices_are_near_zero(k, n):
    """Under independence Pearson's chi2 and the G statistic 2 n MI (nats) are both
    ~ chi2 with df = (k-1)^2 degrees of freedom: mean df, standard deviation sqrt(2 df).
    Five standard deviations above the mean give the bounds
        V   <= sqrt((df + 5 sqrt(2 df)) / (n (k-1)))            [V = sqrt(chi2 / (n (k-1)))]
        NMI <= (df + 5 sqrt(2 df)) / (2 n sqrt(H_i H_j))        [NMI = MI / sqrt(H_i H_j)]
    (for k = 8, n = 20000: V <= 0.027, NMI <= 0.0012), far below the value 1 of dependent layers.
    """
    rng = np.random.default_rng(k)
    x = rng.integers(0, k, size=(n, 4))
    dep = metrics.dependence_matrices(x)
    df = (k - 1) ** 2
    chi2_hi = df + 5 * math.sqrt(2 * df)
    v_bound = math.sqrt(chi2_hi / (n * (k - 1)))
    for i in range(4):
        for j in range(i + 1, 4):
            h = [metrics.entropy(np.bincount(x[:, l], minlength=k) / n) for l in (i, j)]
            nmi_bound = chi2_hi / (2 * n * math.sqrt(h[0] * h[1]))
            assert 0 <= dep["cramers_v"][i][j] <= v_bound
            assert 0 <= dep["nmi"][i][j] <= nmi_bound
            # The reported chance levels are the expectations (df in place of chi2_hi).
            assert dep["cramers_v_chance"][i][j] == pytest.approx(math.sqrt(df / (n * (k - 1))))
            assert dep["nmi_chance"][i][j] == pytest.approx(df / (2 * n * math.sqrt(h[0] * h[1])))
            assert dep["cramers_v_chance"][i][j] < v_bound and dep["nmi_chance"][i][j] < nmi_bound


def test_partial_dependence_lies_between():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, size=20000)
    b = np.where(rng.random(20000) < 0.5, a, rng.integers(0, 4, size=20000))
    v, m = metrics.cramers_v(a, b), metrics.nmi(a, b)
    assert 0.3 < v < 0.8 and 0.05 < m < 0.8


def test_degenerate_constant_layer():
    """A layer with one expert: entropy 0, V = NMI = 0 by definition (also with itself),
    switch rate 0, segments as long as the utterances; every number finite."""
    rng = np.random.default_rng(4)
    const = np.zeros(300, dtype=int)
    other = rng.integers(0, 4, size=300)
    assert metrics.cramers_v(const, other) == 0.0 and metrics.nmi(const, other) == 0.0
    assert metrics.cramers_v(const, const) == 0.0 and metrics.nmi(const, const) == 0.0
    usage = metrics.usage_summary(layers(const, other), 4)
    assert usage["entropy"][0] == 0.0 and usage["normalised_entropy"][0] == 0.0
    assert usage["unused_experts"][0] == [1, 2, 3] and usage["max_fraction"][0] == 1.0
    utts = [layers(const[:100], other[:100]), layers(const[100:], other[100:])]
    assert metrics.switch_rate(utts)[0] == 0.0
    assert metrics.mean_segment_length(utts)[0] == 150.0
    assert metrics.cramers_v([], []) == 0.0 and metrics.nmi([], []) == 0.0
    assert metrics.usage_summary(np.zeros((10, 2), dtype=int), 1)["normalised_entropy"] == [0.0, 0.0]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=60),
    st.permutations(list(range(6))),
)
def test_v_and_nmi_bounded_symmetric_and_relabelling_invariant(pairs, perm):
    a, b = np.array(pairs).T
    perm = np.array(perm)
    for f in (metrics.cramers_v, metrics.nmi):
        value = f(a, b)
        assert 0.0 <= value <= 1.0 and math.isfinite(value)
        assert f(b, a) == pytest.approx(value, abs=1e-9)
        assert f(perm[a], b) == pytest.approx(value, abs=1e-9)


# ----------------------------------------------------------------------------- usage, time, sets
def test_usage_fractions_and_entropy():
    x = layers([0, 1, 2, 3] * 25, [0] * 50 + [1] * 50)
    usage = metrics.usage_summary(x, 4)
    np.testing.assert_allclose(usage["fractions"], [[0.25] * 4, [0.5, 0.5, 0, 0]])
    assert usage["entropy"][0] == pytest.approx(math.log(4))
    assert usage["normalised_entropy"] == pytest.approx([1.0, 0.5])
    assert usage["perplexity"] == pytest.approx([4.0, 2.0])
    assert usage["unused_experts"] == [[], [2, 3]] and usage["num_unused"] == [0, 2]
    with pytest.raises(ValueError):
        metrics.usage_fractions(layers([0, 4]), 4)


def test_constant_choices_give_zero_switch_rate():
    utts = [np.full((t, 3), 2) for t in (5, 9, 1)]
    np.testing.assert_array_equal(metrics.switch_rate(utts), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(metrics.mean_segment_length(utts), [5.0, 5.0, 5.0])  # 15 frames / 3 runs
    seg = metrics.segment_summary(utts, seed=0)
    assert seg["switch_rate_shuffled"] == [0.0, 0.0, 0.0]


def test_switch_rate_and_segments_by_hand():
    # Utterance 1: 0 0 1 1 1 2 -> 2 switches in 5 pairs, 3 runs; utterance 2: 2 | 0 ... the
    # change across the utterance boundary is not a switch.  Utterance 2: 0 1 0 1 -> 3 of 3.
    u1, u2 = np.array([[0, 0, 1, 1, 1, 2]]).T, np.array([[0, 1, 0, 1]]).T
    assert metrics.switch_rate([u1, u2])[0] == pytest.approx(5 / 8)
    assert metrics.mean_segment_length([u1, u2])[0] == pytest.approx(10 / 7)
    assert metrics.switch_rate([np.zeros((1, 2), int)]).tolist() == [0.0, 0.0]  # no pairs: 0
    assert metrics.switch_rate([]).tolist() == []


def test_shuffled_baseline_is_seeded_and_higher_for_blocky_routing():
    rng = np.random.default_rng(5)
    blocky = [np.repeat(rng.integers(0, 4, size=(10, 2)), 8, axis=0) for _ in range(6)]  # runs of 8
    seg = metrics.segment_summary(blocky, seed=3)
    assert seg == metrics.segment_summary(blocky, seed=3)
    assert seg != metrics.segment_summary(blocky, seed=4)
    for layer in range(2):
        assert seg["switch_rate"][layer] < 0.15 < 0.5 < seg["switch_rate_shuffled"][layer]
        assert seg["mean_segment_length"][layer] > 4 * seg["mean_segment_length_shuffled"][layer]
    # Independent frames: shuffling changes nothing on average.
    iid = [rng.integers(0, 4, size=(500, 1)) for _ in range(4)]
    seg = metrics.segment_summary(iid, seed=0)
    assert seg["switch_rate"][0] == pytest.approx(seg["switch_rate_shuffled"][0], abs=0.05)


def test_jensen_shannon():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.5, 0.3, 0.2]])
    js = metrics.jensen_shannon(p, q, axis=1)
    assert js[0] == 0.0 and js[1] == pytest.approx(1.0)
    assert 0 < js[2] < 1 and metrics.jensen_shannon(q, p, axis=1)[2] == pytest.approx(js[2])
    assert metrics.jensen_shannon(np.zeros(3), np.ones(3) / 3) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- records
def layer_routing(expert_rows, valid):
    n = len(expert_rows)
    expert = torch.tensor(expert_rows, dtype=torch.long).view(n, 1)
    probs = torch.full((n, 4), 0.25)
    return LayerRouting(Routing(expert, probs[:, :1], probs, probs.log()), torch.tensor(valid), torch.zeros(()))


def test_split_routing_follows_the_valid_mask():
    valid = [[True, True, True, False], [True, False, False, False], [True, True, False, False]]
    # Rows are the True entries in row-major order: utt0 has 3 frames, utt1 1, utt2 2.
    recs = [layer_routing([0, 1, 2, 3, 0, 1], valid), layer_routing([3, 3, 3, 2, 1, 1], valid)]
    utts = split_routing(recs)
    assert [u.tolist() for u in utts] == [[[0, 3], [1, 3], [2, 3]], [[3, 2]], [[0, 1], [1, 1]]]
    with pytest.raises(ValueError, match="real frames"):
        split_routing([layer_routing([0, 1], valid)])
    with pytest.raises(ValueError, match="did not run"):
        split_routing([recs[0], None])
    other = [[True, True, False, False]] * 3
    with pytest.raises(ValueError, match="other frames"):
        split_routing([recs[0], layer_routing([0] * 6, other)])


def test_split_gates_follows_the_valid_mask():
    valid = [[True, True, False], [True, False, False]]
    rec = layer_routing([0, 1, 2], valid)
    rec.routing.gate = torch.tensor([[0.5], [0.25], [0.75]])
    other = layer_routing([0, 0, 0], valid)  # gates 0.25
    utts = split_gates([rec, other])
    assert [u.tolist() for u in utts] == [[[0.5, 0.25], [0.25, 0.25]], [[0.75, 0.25]]]
    assert utts[0].dtype == np.float32
    with pytest.raises(ValueError, match="did not run"):
        split_gates([rec, None])


def test_split_routing_and_gates_equals_the_two_splits():
    valid = [[True, True, False], [True, False, False]]
    rec = layer_routing([0, 1, 2], valid)
    rec.routing.gate = torch.tensor([[0.5], [0.25], [0.75]])
    recs = [rec, layer_routing([3, 2, 1], valid)]
    experts, gates = split_routing_and_gates(recs)
    assert [u.tolist() for u in experts] == [u.tolist() for u in split_routing(recs)]
    assert [u.tolist() for u in gates] == [u.tolist() for u in split_gates(recs)]
    assert experts[0].dtype == np.int32 and gates[0].dtype == np.float32
    with pytest.raises(ValueError, match="other frames"):
        split_routing_and_gates([rec, layer_routing([0, 0], [[True, False, False], [True, False, False]])])


def synthetic_record(name, seed, num_utts=6, num_layers=3, num_experts=4, shared=True, gates=False):
    rng = np.random.default_rng(seed)
    experts = []
    for _ in range(num_utts):
        t = int(rng.integers(5, 40))
        base = np.repeat(rng.integers(0, num_experts, size=t // 3 + 1), 3)[:t]
        cols = [base] + [rng.integers(0, num_experts, size=t) for _ in range(num_layers - 2)] + [np.zeros(t, int)]
        experts.append(np.stack(cols[:num_layers], axis=1).astype(np.int32))
    gate_values = None
    if gates:  # layer l's gates are (l + 1) / (num_layers + 1), a quarter of the frames at 1
        gate_values = []
        for x in experts:
            g = np.tile((np.arange(num_layers, dtype=np.float32) + 1) / (num_layers + 1), (len(x), 1))
            g[: len(x) // 4] = 1.0
            gate_values.append(g)
    return RoutingRecord(
        experts=experts,
        utt_ids=[f"{name}_{i}" for i in range(num_utts)],
        num_experts=num_experts,
        layer_names=[f"encoders.{i // 2}.feed_forward{'_macaron' if i % 2 == 0 else ''}" for i in range(num_layers)],
        router_ids=[0] * num_layers if shared else list(range(num_layers)),
        shared_router=shared,
        name=name,
        sample_rate=16000,
        gates=gate_values,
    )


def test_record_save_load_round_trip(tmp_path):
    rec = synthetic_record("a", 0)
    rec.save(str(tmp_path / "a.npz"))
    back = RoutingRecord.load(str(tmp_path / "a.npz"))
    assert back.utt_ids == rec.utt_ids and back.layer_names == rec.layer_names
    assert all(np.array_equal(x, y) for x, y in zip(back.experts, rec.experts))
    assert (back.num_experts, back.router_ids, back.shared_router) == (4, [0, 0, 0], True)
    assert back.gates is None

    rec = synthetic_record("g", 0, gates=True)
    rec.save(str(tmp_path / "g.npz"))
    back = RoutingRecord.load(str(tmp_path / "g.npz"))
    assert [g.shape for g in back.gates] == [x.shape for x in rec.experts]
    # stored as float16: the quarters and 1.0 are exact
    assert all(np.array_equal(a, b) for a, b in zip(back.gates, rec.gates))


def test_gate_means_per_layer_and_overall():
    recs = [synthetic_record("a", 0, gates=True), synthetic_record("b", 1, gates=True)]
    res = compute(recs)
    gates = np.concatenate([g for r in recs for g in r.gates])
    expected = gates.mean(axis=0)
    assert res["usage"]["gate_mean"] == pytest.approx(expected.tolist())
    assert res["headline"]["gate_mean"] == pytest.approx(float(gates.mean()))
    assert expected[0] < expected[1] < expected[2]  # layer order kept
    # a record without gates (older npz files) gives no gate numbers rather than wrong ones
    mixed = compute([recs[0], synthetic_record("c", 2)])
    assert mixed["usage"]["gate_mean"] is None and mixed["headline"]["gate_mean"] is None


@pytest.mark.parametrize("shared", [True, False])
def test_analyze_records_writes_everything_without_nan(tmp_path, shared):
    """Synthetic routings with a constant layer (degenerate) and two data sets; then a
    one-layer model (no layer pairs: null means) compared against the first summary."""
    recs = [synthetic_record("a", 0, shared=shared), synthetic_record("b", 1, shared=shared)]
    out = tmp_path / "two"
    summary = analyze_records(recs, str(out), model_info={"label": "synthetic"})
    for name in ("usage", "layer_dependence", "segments", "sets", "summary"):
        no_nan_load(out / f"{name}.json")
    for name in ("usage", "layer_dependence", "segments", "sets"):
        with open(out / f"{name}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    dep = no_nan_load(out / "layer_dependence.json")
    assert ("agreement" in dep) == shared
    assert dep["cramers_v"][2][2] == 0.0  # the constant layer
    assert summary["headline"]["sets_jsd_mean"] > 0
    assert summary == no_nan_load(out / "summary.json")
    assert (out / "routing" / "a.npz").exists()

    one = [RoutingRecord(**{**synthetic_record("c", 2, num_layers=1, shared=shared).__dict__})]
    one[0].layer_names, one[0].router_ids = ["encoders.0.feed_forward"], [0]
    out1 = tmp_path / "one"
    s1 = analyze_records(one, str(out1), compare=str(out / "summary.json"), model_info={"label": "one"})
    assert s1["headline"]["cramers_v_mean"] is None and s1["sets"] is None
    assert not (out1 / "sets.json").exists()
    md = (out1 / "summary.md").read_text()
    assert "| metric | this model (one) | other model (synthetic) |" in md
    for figure in ("usage.png", "layer_dependence.png", "segments.png"):
        assert f"- `{figure}`: " in md
    no_nan_load(out1 / "summary.json")


def test_compute_example_and_duplicate_names():
    recs = [synthetic_record("x", 0), synthetic_record("x", 1)]
    res = compute(recs, example_utt="x_3")
    assert [d["name"] for d in res["data"]] == ["x", "x_2"]
    assert res["segments"]["example"]["utt_id"] == "x_3"
    with pytest.raises(KeyError):
        compute(recs, example_utt="nope")
