"""``python -m espnet_omnirouter.bin.analyze_routing`` on a tiny trained Omni-router Conformer."""
import json
import os

import numpy as np
import pytest
import torch

import espnet_omnirouter  # noqa: F401  (a process that loads a model must register first)
from espnet_omnirouter.analysis import RoutingRecord, WavScp, metrics, record_routing, split_routing

from tiny_asr_data import PYTHON, run, write_data

OUTPUTS = [f"{n}.{ext}" for n in ("usage", "layer_dependence", "segments", "sets") for ext in ("png", "json")]
OUTPUTS += ["summary.md", "summary.json"]
CLI_OPTIONS = dict(max_utts=6, batch_size=3)


@pytest.fixture(scope="module")
def trained(tiny_omni, tmp_path_factory):
    """The session's tiny Omni-router Conformer (``tiny_omni`` in conftest.py) and a second,
    unseen data set; returns (exp dir, [two data dirs], loaded model)."""
    from espnet_omnirouter.hub import load_asr_model

    data, exp = tiny_omni
    other = write_data(str(tmp_path_factory.mktemp("analysis") / "other_set"), num_utts=5, seed=1)
    model, _ = load_asr_model(exp)
    return exp, [data, other], model


def load_json(path):
    def bad(name):
        raise AssertionError(f"{path}: {name} in JSON")

    with open(path) as f:
        return json.load(f, parse_constant=bad)


def test_cli_writes_every_output_and_its_numbers_match_the_recorded_routing(trained, tmp_path):
    exp, data, model = trained
    # The other model of --compare: the same routing analysed through the Python API.
    from espnet_omnirouter.analysis import analyze_records

    records = [record_routing(model, d, **CLI_OPTIONS) for d in data]
    ref = analyze_records(records, str(tmp_path / "ref"), model_info={"label": "reference"})

    out = tmp_path / "out"
    log = run(
        [
            PYTHON, "-m", "espnet_omnirouter.bin.analyze_routing",
            "--model", exp,
            "--data", data[0],
            "--data", os.path.join(data[1], "wav.scp"),
            "--out", str(out),
            "--compare", str(tmp_path / "ref" / "summary.json"),
            "--max_utts", str(CLI_OPTIONS["max_utts"]),
            "--batch_size", str(CLI_OPTIONS["batch_size"]),
        ],
        str(tmp_path / "analyze.log"),
    )
    assert "summary.md" in log
    for name in OUTPUTS:
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = load_json(out / "summary.json")
    names = [os.path.basename(data[0]), "other_set"]
    assert [d["name"] for d in summary["data"]] == names
    assert [d["num_utts"] for d in summary["data"]] == [6, 5]

    # Recompute every reported number from the routing recorded in this process.
    for rec, name in zip(records, names):
        saved = RoutingRecord.load(str(out / "routing" / f"{name}.npz"))
        assert saved.utt_ids == rec.utt_ids
        assert all(np.array_equal(a, b) for a, b in zip(saved.experts, rec.experts))
    pooled = RoutingRecord.concat(records)
    x, num_layers = pooled.frames(), pooled.num_layers
    assert num_layers == 4 and pooled.shared_router and set(pooled.router_ids) == {0}

    usage = load_json(out / "usage.json")
    np.testing.assert_allclose(usage["fractions"], metrics.usage_fractions(x, 4))
    frac = np.asarray(usage["fractions"])
    np.testing.assert_allclose(usage["entropy"], [-(p[p > 0] * np.log(p[p > 0])).sum() for p in frac])
    assert usage["unused_experts"] == [np.flatnonzero(p == 0).tolist() for p in frac]

    dep = load_json(out / "layer_dependence.json")
    assert "sqrt(H(X_i) H(X_j))" in dep["nmi_normalisation"]
    for i in range(num_layers):
        for j in range(num_layers):
            assert dep["cramers_v"][i][j] == pytest.approx(metrics.cramers_v(x[:, i], x[:, j]), abs=1e-12)
            assert dep["nmi"][i][j] == pytest.approx(metrics.nmi(x[:, i], x[:, j]), abs=1e-12)
            assert dep["agreement"][i][j] == pytest.approx(np.mean(x[:, i] == x[:, j]), abs=1e-12)
            assert dep["agreement_chance"][i][j] == pytest.approx(frac[i] @ frac[j], abs=1e-12)

    seg = load_json(out / "segments.json")
    np.testing.assert_allclose(seg["switch_rate"], metrics.switch_rate(pooled.experts))
    np.testing.assert_allclose(seg["mean_segment_length"], metrics.mean_segment_length(pooled.experts))
    baseline = metrics.segment_summary(pooled.experts, seed=0)
    np.testing.assert_allclose(seg["switch_rate_shuffled"], baseline["switch_rate_shuffled"])
    np.testing.assert_allclose(seg["mean_segment_length_shuffled"], baseline["mean_segment_length_shuffled"])
    longest = int(np.argmax(pooled.lengths))
    assert seg["example"]["utt_id"] == pooled.utt_ids[longest]
    assert seg["example"]["experts"] == pooled.experts[longest].tolist()

    sets = load_json(out / "sets.json")
    fa, fb = (metrics.usage_fractions(r.frames(), 4) for r in records)
    np.testing.assert_allclose(sets["usage"][names[0]], fa)
    np.testing.assert_allclose(sets["pairs"][0]["jsd"], metrics.jensen_shannon(fa, fb, axis=1))

    # Same routing, same numbers: the API's summary equals the CLI's apart from labels.
    assert summary["headline"] == pytest.approx(ref["headline"])
    md = (out / "summary.md").read_text()
    assert "| metric | this model (exp) | other model (reference) |" in md
    for figure in ("usage.png", "layer_dependence.png", "segments.png", "sets.png"):
        assert f"- `{figure}`: " in md


def test_padded_frames_are_never_routed(trained):
    """A batch of utterances of different lengths: ESPnet's own batch lengths are what the
    MoE layers routed (padding excluded), and the record keeps exactly the frames that each
    utterance has when it is encoded alone, as decoding does."""
    _, data, model = trained
    scp = WavScp(data[0])
    wavs = {utt: wav for utt, wav, _ in (scp.read(i) for i in range(5))}
    lens = torch.tensor([len(w) for w in wavs.values()])
    assert len(set(lens.tolist())) == 5
    speech = torch.zeros(5, int(lens.max()))
    for b, w in enumerate(wavs.values()):
        speech[b, : len(w)] = torch.from_numpy(w)
    with torch.no_grad():
        _, batch_lens = model.encode(speech, lens)
        per_utt = split_routing(model.encoder.moe_records())
        alone = [int(model.encode(torch.from_numpy(w)[None], torch.tensor([len(w)]))[1]) for w in wavs.values()]
    # The MoE layers routed ESPnet's real frames of the batch, never the padding up to T_max.
    assert [len(u) for u in per_utt] == batch_lens.tolist()
    assert sum(len(u) for u in per_utt) < 5 * int(batch_lens.max())

    batched = record_routing(model, wavs, batch_size=5)
    single = record_routing(model, wavs, batch_size=1)
    assert batched.utt_ids == single.utt_ids == list(wavs)
    assert batched.lengths.tolist() == single.lengths.tolist() == alone
    # ESPnet's conv2d subsampling counts 1-2 padding-made frames of shorter utterances as
    # real in a batch: those are dropped.  The Conformer convolution module has no padding
    # mask, so padding may still sway a few choices near an utterance's end; the bulk agrees.
    assert all(b <= a + 2 for a, b in zip(alone, batch_lens.tolist()))
    agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(batched.experts, single.experts)]))
    assert agree > 0.9
    # Without batching, the record is the encoder's routing of each utterance alone.
    first = torch.from_numpy(wavs[single.utt_ids[0]])
    with torch.no_grad():
        model.encode(first[None], torch.tensor([len(first)]))
    assert np.array_equal(split_routing(model.encoder.moe_records())[0], single.experts[0])
    # ... and each frame's gate is the full-softmax router probability of its chosen expert.
    for layer, ffn in enumerate(model.encoder.moe_ffns()):
        routing = ffn.last.routing
        chosen = routing.probs.gather(1, routing.expert[:, :1]).squeeze(1)
        assert np.allclose(single.gates[0][:, layer], chosen.numpy(), atol=1e-6)
    assert all(1.0 / single.num_experts - 1e-6 <= g.min() and g.max() <= 1.0 + 1e-6 for g in single.gates)


@pytest.mark.parametrize("option", ["--max_utts", "--batch_size"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_cli_rejects_counts_below_one(option, value, tmp_path, capsys):
    from espnet_omnirouter.bin.analyze_routing import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "out"), option, value])
    assert e.value.code == 2
    assert f"error: {option} must be >= 1, got {value}" in capsys.readouterr().err
