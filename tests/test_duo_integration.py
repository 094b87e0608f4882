"""Duo end to end (CPU): two-stage training through our ``asr_train`` (stage 1 random routing,
stage 2 learned routers on the frozen stage-1 backbone), the training logs, the checkpoints,
decoding with each policy through our ``asr_inference``, its option errors, and DDP."""
import datetime
import os
import re
import socket
from decimal import Decimal

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import espnet_omnirouter  # noqa: F401  (a process that loads a model must register first)
from espnet_omnirouter.encoders import DuoConformerEncoder
from espnet_omnirouter.moe import PATHS
from espnet_omnirouter.moe.duo import duo_path_fractions

from tiny_asr_data import PYTHON, ROOT, inference_args, run, train_args, write_data

STAGE1 = os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer.yaml")
STAGE2 = os.path.join(ROOT, "conf", "tiny", "train_asr_duo_conformer_router.yaml")
NUM_SLOTS = 4  # 2 blocks x (macaron FFN + FFN)
COSTS = {"big": 1.0, "small": 8 / 64, "skip": 0.0}  # duo_small_units 8 of linear_units 64
BUDGET_WEIGHT = 10.0  # model_conf.duo_budget_weight's default


@pytest.fixture(scope="module")
def duo(tmp_path_factory):
    """Stage 1 (random routing) 1 epoch, then stage 2 (learned routers, frozen backbone,
    budget 0.5) 1 epoch from stage 1's ``1epoch.pth``.

    Returns a dict: ``data``, ``exp1``, ``exp2`` (the exp dirs) and ``log1``, ``log2`` (the logs)."""
    tmp = tmp_path_factory.mktemp("duo")
    data = write_data(str(tmp / "data"), num_utts=8)
    exp1, exp2 = str(tmp / "exp1"), str(tmp / "exp2")
    train = [PYTHON, "-m", "espnet_omnirouter.bin.asr_train"]
    log1 = run([*train, *train_args(data, STAGE1, exp1, "--max_epoch", "1")], str(tmp / "train1.log"))
    log2 = run(
        [*train, *train_args(data, STAGE2, exp2, "--max_epoch", "1", "--init_param", os.path.join(exp1, "1epoch.pth"))],
        str(tmp / "train2.log"),
    )
    return {"data": data, "exp1": exp1, "exp2": exp2, "log1": log1, "log2": log2, "tmp": tmp}


# ---------------------------------------------------------------------------------------------
# Training logs


def epoch_results(log, epoch=1):
    """``({"train": {key: printed value}, "valid": {...}}, line)`` of the "Nepoch results" line
    (numeric values only, as the printed strings)."""
    line = next(l for l in log.splitlines() if f"{epoch}epoch results" in l)
    sections = {}
    for name, body in re.findall(r"\[(train|valid)\] (.*?)(?=, \[(?:train|valid)\] |$)", line):
        sections[name] = dict(re.findall(r"(?:^|, )(\w+)=([-+0-9.e]+)(?=, |$)", body))
    assert sorted(sections) == ["train", "valid"], line
    return sections, line


def half_ulp(printed: str) -> float:
    """Half a unit in the last printed digit: the rounding error of ESPnet's ``.3f`` / ``.3e``."""
    return 0.5 * 10.0 ** Decimal(printed).as_tuple().exponent


def test_stage1_log_has_path_fractions_and_compute(duo):
    sections, line = epoch_results(duo["log1"])
    assert "duo_budget_loss" not in line  # random routing: no budget loss
    for name, stats in sections.items():
        assert f"duo{NUM_SLOTS}_big" not in stats, (name, line)  # exactly 4 slots
        per_slot = []
        for i in range(NUM_SLOTS):
            fractions = {p: float(stats[f"duo{i}_{p}"]) for p in PATHS}
            assert all(0.0 <= f <= 1.0 for f in fractions.values()), (name, i, fractions)
            assert abs(sum(fractions.values()) - 1.0) <= 1e-3, (name, i, fractions)
            per_slot.append(sum(COSTS[p] * f for p, f in fractions.items()))
        expected = sum(per_slot) / NUM_SLOTS
        assert abs(float(stats["duo_compute"]) - expected) <= 2e-3, (name, stats["duo_compute"], expected)
        # Random routing (uniform by default) takes every path somewhere in an epoch.
        assert 0.0 < float(stats["duo_compute"]) < 1.0, (name, stats["duo_compute"])


def test_stage2_log_has_the_budget_loss_in_the_total(duo):
    sections, line = epoch_results(duo["log2"])
    for name, stats in sections.items():
        for key in ("loss", "loss_asr", "duo_budget_loss", "duo_compute", "duo0_big", f"duo{NUM_SLOTS - 1}_skip"):
            assert key in stats, (name, key, line)
        loss, asr, budget = (float(stats[k]) for k in ("loss", "loss_asr", "duo_budget_loss"))
        # Each value is the epoch mean, printed rounded: the total is exact up to that rounding.
        tolerance = half_ulp(stats["loss"]) + half_ulp(stats["loss_asr"]) + BUDGET_WEIGHT * half_ulp(stats["duo_budget_loss"])
        assert abs(loss - (asr + BUDGET_WEIGHT * budget)) <= tolerance * 1.01, (name, loss, asr, budget, tolerance)
        assert budget > 0.0 and loss > asr, (name, stats)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_stage2_trains_only_the_routers_of_the_stage1_model(duo):
    stage1 = torch.load(os.path.join(duo["exp1"], "1epoch.pth"), map_location="cpu")
    stage2 = torch.load(os.path.join(duo["exp2"], "1epoch.pth"), map_location="cpu")
    assert sorted(stage1) == sorted(stage2)
    routers = [k for k in stage2 if "router" in k]
    assert len(routers) == NUM_SLOTS, routers  # one per slot
    for key, value in stage2.items():
        if key in routers:
            assert not torch.equal(value, stage1[key]), key
        else:
            assert torch.equal(value, stage1[key]), key
    # batch-norm statistics are among the kept tensors
    assert any(k.endswith("running_mean") for k in stage2) and any(k.endswith("num_batches_tracked") for k in stage2)


# ---------------------------------------------------------------------------------------------
# Decoding with each policy

DECODE_POLICIES = {
    "big": ["--duo_policy", "big"],
    "small": ["--duo_policy", "small"],
    "static_BSKB": ["--duo_policy", "static", "--duo_pattern", "BSKB"],
    "random": ["--duo_policy", "random", "--duo_probs", "0.5,0.25,0.25"],
    "learned": ["--duo_policy", "learned"],
    "learned_bias2": ["--duo_policy", "learned", "--duo_cost_bias", "2.0"],
    "default": [],
}
# The compute of the fixed policies, as logged (%.4f).
FIXED_COMPUTE = {
    "big": 1.0,
    "small": COSTS["small"],
    "static_BSKB": (COSTS["big"] + COSTS["small"] + COSTS["skip"] + COSTS["big"]) / 4,
}
COMPUTE_LINE = re.compile(r"Duo compute \(relative to all-big\): (\S+)$", re.M)
INFERENCE = [PYTHON, "-m", "espnet_omnirouter.bin.asr_inference"]


def utterances(data):
    with open(os.path.join(data, "wav.scp")) as f:
        return [line.split()[0] for line in f]


@pytest.fixture(scope="module")
def decode(duo):
    """``decode(policy)``: decode the stage-2 model with ``DECODE_POLICIES[policy]`` through
    ``python -m espnet_omnirouter.bin.asr_inference``, once per module; returns
    ``(hyps {utt: text}, [logged compute strings], log)``."""
    done = {}

    def decode_(policy):
        if policy not in done:
            out = str(duo["tmp"] / f"decode_{policy}")
            args = inference_args(
                os.path.join(duo["exp2"], "config.yaml"), os.path.join(duo["exp2"], "1epoch.pth"),
                duo["data"], out, *DECODE_POLICIES[policy],
            )
            log = run([*INFERENCE, *args], out + ".log")
            with open(os.path.join(out, "1best_recog", "text")) as f:
                hyps = dict(line.rstrip("\n").partition(" ")[::2] for line in f)
            done[policy] = hyps, COMPUTE_LINE.findall(log), log
        return done[policy]

    return decode_


def mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("policy", list(DECODE_POLICIES))
def test_decode_with_policy(duo, decode, policy):
    hyps, computes, log = decode(policy)
    utts = utterances(duo["data"])
    assert sorted(hyps) == sorted(utts)
    assert len(computes) == len(utts), log[-3000:]  # one encoder forward per utterance
    values = [float(c) for c in computes]
    assert all(0.0 <= v <= 1.0 for v in values), computes
    if policy in FIXED_COMPUTE:
        assert computes == [f"{FIXED_COMPUTE[policy]:.4f}"] * len(utts)
    elif policy == "random":
        # 0.5 big, 0.25 small, 0.25 skip: 0.53125 expected (each utterance: ~100 frames x 4 slots).
        assert abs(mean(values) - (0.5 + 0.25 * COSTS["small"])) < 0.1, computes
        assert len(set(computes)) > 1, computes
    elif policy == "default":
        # A stage-2 model decodes with its routers by default: exactly the learned policy.
        learned_hyps, learned_computes, _ = decode("learned")
        assert computes == learned_computes and hyps == learned_hyps


def test_cost_bias_spends_at_most_the_compute_of_the_plain_routers(decode):
    _, plain, _ = decode("learned")
    _, biased, _ = decode("learned_bias2")
    plain, biased = [float(v) for v in plain], [float(v) for v in biased]
    assert mean(biased) <= mean(plain), (biased, plain)


# ---------------------------------------------------------------------------------------------
# Bad decoding options (the entry point's main(), in this process: no start-up per case)


def inference_main(args):
    from espnet_omnirouter.bin import asr_inference

    asr_inference.main(args)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--duo_policy", "static"], r"error: duo_pattern is for duo_policy: static \(and needed by it\)"),
        (["--duo_policy", "random", "--duo_probs", "0.5,0.6,0.1"], r"error: duo_probs must be 3 probabilities"),
        (["--duo_policy", "big", "--duo_pattern", "BSKB"], r"error: duo_pattern is for duo_policy: static"),
        (["--duo_policy", "fastest"], r"error: argument --duo_policy: invalid choice: 'fastest'"),
    ],
    ids=["static-without-pattern", "probs-not-summing-to-1", "pattern-without-static", "unknown-policy"],
)
def test_bad_option_is_an_argparse_error_before_the_model_loads(options, message, tmp_path, capsys):
    # The model file does not exist: an error after the model load would be a FileNotFoundError.
    args = inference_args(STAGE1, str(tmp_path / "missing.pth"), str(tmp_path), str(tmp_path / "out"), *options)
    with pytest.raises(SystemExit) as exit_:
        inference_main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert re.search(message, err), err


def test_pattern_of_the_wrong_length_names_the_slot_count(duo, tmp_path):
    args = inference_args(
        os.path.join(duo["exp2"], "config.yaml"), os.path.join(duo["exp2"], "1epoch.pth"), duo["data"],
        str(tmp_path / "out"), "--duo_policy", "static", "--duo_pattern", "BSK",
    )
    with pytest.raises(ValueError, match=rf"duo_pattern has 3 letters, the model has {NUM_SLOTS} Duo slots \(encoders\.0\."):
        inference_main(args)


def test_duo_policy_on_a_dense_model_is_an_error(duo, tmp_path):
    """The stage-1 config with a dense Conformer, decoded without a model file (ESPnet then
    builds the model from the config alone, untrained)."""
    with open(os.path.join(duo["exp1"], "config.yaml")) as f:
        config = yaml.safe_load(f)
    config["encoder"] = "conformer"
    config["encoder_conf"] = {k: v for k, v in config["encoder_conf"].items() if not k.startswith("duo_")}
    config["model_conf"] = {k: v for k, v in config["model_conf"].items() if not k.startswith("duo_")}
    path = str(tmp_path / "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    args = inference_args(path, None, duo["data"], str(tmp_path / "out"), "--duo_policy", "big")
    with pytest.raises(ValueError, match=r"duo_\* options are for duo_\* encoders; the model's encoder is ConformerEncoder"):
        inference_main(args)


# ---------------------------------------------------------------------------------------------
# DDP (gloo, 2 CPU processes, find_unused_parameters=False)

DDP_INPUT = 12
DDP_ENCODER = dict(
    output_size=16, attention_heads=2, linear_units=32, num_blocks=2, input_layer="linear",
    macaron_style=True, rel_pos_type="latest", duo_small_units=4,
)
DDP_ROUTING = {
    "random_big_only": dict(duo_routing="random", duo_train_probs=[1.0, 0.0, 0.0]),
    "learned": dict(duo_routing="learned"),
}
DDP_STEPS = 3


def _ddp_train(rank, world_size, port, routing):
    """DDP_STEPS Adam steps of a DDP-wrapped Duo Conformer on this rank's own padded batches."""
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        encoder = DuoConformerEncoder(DDP_INPUT, **DDP_ENCODER, **DDP_ROUTING[routing])
        encoder.train()
        model = DistributedDataParallel(encoder)  # find_unused_parameters=False
        initial = {n: p.detach().clone() for n, p in encoder.named_parameters()}
        optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
        generator = torch.Generator().manual_seed(1000 + rank)
        fractions = []
        for _ in range(DDP_STEPS):
            lengths = torch.randint(6, 30, (3,), generator=generator)
            lengths[0] = 30
            x = torch.randn(3, 30, DDP_INPUT, generator=generator)
            target = torch.randn(3, 30, DDP_ENCODER["output_size"], generator=generator)
            out, out_lengths, _ = model(x, lengths)
            valid = torch.arange(out.shape[1]) < out_lengths.unsqueeze(1)
            loss = (out - target).square()[valid].mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            fractions.append(duo_path_fractions(encoder.duo_records(), len(PATHS)))
        return {
            "initial": initial,
            "final": {n: p.detach().clone() for n, p in encoder.named_parameters()},
            "requires_grad": {n: p.requires_grad for n, p in encoder.named_parameters()},
            "fractions": torch.stack(fractions),
        }
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank, world_size, ports, out_dir):
    """Each configuration of DDP_ROUTING in turn (one process start for all); a failure is
    saved as the configuration's result, for its test to report."""
    import traceback

    torch.set_num_threads(1)
    for routing, port in zip(DDP_ROUTING, ports):
        try:
            result = _ddp_train(rank, world_size, port, routing)
        except Exception:
            result = {"error": traceback.format_exc()}
        torch.save(result, os.path.join(out_dir, f"{routing}_rank{rank}.pt"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """``{routing: [result of rank 0, result of rank 1]}`` of 2-process DDP training."""
    out = tmp_path_factory.mktemp("ddp")
    ports = []
    while len(ports) < len(DDP_ROUTING):
        port = free_port()
        if port not in ports:
            ports.append(port)
    mp.spawn(_ddp_worker, args=(2, ports, str(out)), nprocs=2, join=True)
    return {r: [torch.load(str(out / f"{r}_rank{rank}.pt")) for rank in range(2)] for r in DDP_ROUTING}


@pytest.mark.parametrize("routing", list(DDP_ROUTING))
def test_ddp_steps_keep_the_ranks_identical(ddp_results, routing):
    ranks = ddp_results[routing]
    for rank in ranks:
        assert "error" not in rank, rank.get("error")
    final = [r["final"] for r in ranks]
    assert sorted(final[0]) == sorted(final[1])
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
    initial = ranks[0]["initial"]  # rank 0's weights, broadcast by DDP
    trained = [n for n in final[0] if not torch.equal(final[0][n], initial[n])]
    assert any("experts.paths.0" in n for n in trained) and any("self_attn" in n for n in trained), trained
    routers = [n for n in final[0] if "router" in n]
    assert len(routers) == NUM_SLOTS, routers
    for rank in ranks:
        fractions = rank["fractions"]  # [steps, slots, paths]
        assert fractions.shape == (DDP_STEPS, NUM_SLOTS, len(PATHS))
        assert torch.allclose(fractions.sum(-1), torch.ones(DDP_STEPS, NUM_SLOTS))
        if routing == "random_big_only":
            assert (fractions[..., 0] == 1).all()  # the small path gets no frame in any step
            assert not any(rank["requires_grad"][n] for n in routers)  # frozen by design
    if routing == "random_big_only":
        assert not any(n in trained for n in routers)
        assert not any("experts.paths.1" in n for n in trained)  # no frame: zero gradient
    else:
        assert all(n in trained for n in routers)  # straight-through: the task loss trains them


# ---------------------------------------------------------------------------------------------
# The study script (benchmarks/duo.py and duo_report.py) on the tiny models


def test_duo_study_script_on_the_tiny_models(duo, tmp_path, monkeypatch):
    import json
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import duo as duo_study
    import duo_report

    root = tmp_path / "dump"
    root.mkdir()
    for name in ("dev", "test_seen"):
        os.symlink(duo["data"], root / name)
    out = str(tmp_path / "duo.json")
    duo_study.main([
        "--stage1", duo["exp1"], "--stage2", duo["exp2"], "--checkpoint", "1epoch.pth", "--data", str(root),
        "--test_sets", "test_seen", "--budgets", "1.0", "0.5", "--dev_utts", "4", "--oracle_utts", "3",
        "--random_patterns", "3", "--rtf_utts", "2", "--repeats", "1", "--threads", "1", "--out", out,
        "--dense_config", os.path.join(ROOT, "conf", "tiny", "train_asr_conformer.yaml"),
    ])
    with open(out) as f:
        data = json.load(f)
    res = {name: r["sets"]["test_seen"] for name, r in data["results"].items()}
    assert res["big"]["compute"] == pytest.approx(1.0) and res["small"]["compute"] == pytest.approx(COSTS["small"])
    for name, point in data["points"].items():
        if point["policy"] in ("static", "random", "oracle"):
            assert res[name]["compute"] <= point["budget"] + 1e-6, (name, res[name])
        if point["policy"] in ("static", "random"):
            assert len(point["pattern"]) == NUM_SLOTS and set(point["pattern"]) <= set("BSK")
    assert res["oracle@0.5"]["wer"] is None and res["oracle@0.5"]["utts"] == 3  # the oracle subset only
    assert all(0 <= r["wer_oracle_subset"] for r in res.values())
    assert set(data["speed"]["rtf"]) >= {"big", "small", "learned@0.5", "static@0.5", "oracle@0.5", "dense"}
    assert all(len(p) == NUM_SLOTS for p in data["oracle_patterns"]["test_seen"]["0.5"])

    # speed only, again, from the JSON: everything else is kept
    again = str(tmp_path / "duo_speed.json")
    duo_study.main([
        "--stage1", duo["exp1"], "--stage2", duo["exp2"], "--checkpoint", "1epoch.pth", "--data", str(root),
        "--test_sets", "test_seen", "--rtf_utts", "2", "--repeats", "1", "--threads", "1",
        "--speed_from", out, "--out", again,
        "--dense_config", os.path.join(ROOT, "conf", "tiny", "train_asr_conformer.yaml"),
    ])
    with open(again) as f:
        data2 = json.load(f)
    assert data2["results"] == data["results"] and data2["points"] == data["points"]
    assert data2["wers_from"]["command"] == data["command"] and set(data2["speed"]["rtf"]) == set(data["speed"]["rtf"])

    with open(os.path.join(duo["exp2"], "train.log"), "w") as f:  # where asr.sh puts the training log
        f.write(duo["log2"])
    duo_report.main(["--json", again])
    text = (tmp_path / "duo_speed.md").read_text()
    for heading in ("## WER (%) against compute", "## The oracle, on the first 3 utterances", "## Findings",
                    "## Patterns", "## The learned routers per slot"):
        assert heading in text, heading
    assert "measured the speed only" in text
    assert (tmp_path / "duo_speed_pareto.png").stat().st_size > 10000

    # a shared-router stage 2 beside it (here the first run's JSON stands in for it: same stage 1)
    duo_report.main(["--json", again, "--shared", out, "--out_md", str(tmp_path / "both.md")])
    text = (tmp_path / "both.md").read_text()
    assert "## One router shared by all slots (Omni-like) against one router per slot" in text
    shared_row = [line for line in text.splitlines() if line.startswith("| shared | b=0.5 |")]
    compute = data["results"]["learned@0.5"]["sets"]["test_seen"]["compute"]
    assert len(shared_row) == 1 and f"| {compute:.3f} |" in shared_row[0]
    assert "Duo-LLM's 'fewer big paths can beat all big', shared router" in text
    other = dict(data, stage1="egs2/elsewhere/exp/stage1")
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="stage 1 egs2/elsewhere/exp/stage1"):
        duo_report.main(["--json", again, "--shared", str(tmp_path / "other.json"), "--out_md", str(tmp_path / "x.md")])

    # the stage-1 beam-search comparison: its scores are found from any directory, or the report stops
    scored = os.path.join(duo["exp1"], "decode_beam", "test_seen", "score_wer")
    os.makedirs(scored, exist_ok=True)
    with open(os.path.join(scored, "summary.json"), "w") as f:
        json.dump({"Err": 12.5, "Snt": 3, "Wrd": 8}, f)
    quality = tmp_path / "quality.json"
    quality.write_text(json.dumps({"runs": {"0": {"dense": {"exp": "exp/dense", "decode_tag": "decode",
                                                            "wer": {"test_seen": 10.0}}}}}))
    monkeypatch.chdir(tmp_path)
    duo_report.main(["--json", again, "--quality", str(quality), "--stage1_decode_tag", "decode_beam",
                     "--out_md", str(tmp_path / "beam.md")])
    rows = [line for line in (tmp_path / "beam.md").read_text().splitlines() if line.startswith("| Duo stage 1")]
    assert len(rows) == 1 and "| 12.50 |" in rows[0]
    with pytest.raises(SystemExit, match="--stage1_decode_tag decode_greedy: no <set>/score_wer/summary.json"):
        duo_report.main(["--json", again, "--quality", str(quality), "--stage1_decode_tag", "decode_greedy",
                         "--out_md", str(tmp_path / "x.md")])


def test_duo_speed_script_on_the_tiny_models(duo, tmp_path, monkeypatch):
    """duo_speed.py: the trained routers' per-slot mix at each budget's calibrated bias, then the
    speed study on it (a tiny size): every variant timed in every run, the Duo variants' compute
    counted, the bounds at their compute, the report's table."""
    import json
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import duo_speed

    root = tmp_path / "dump"
    root.mkdir()
    os.symlink(duo["data"], root / "test_seen")
    study = tmp_path / "study.json"
    biases = {"0.5": {"bias": 0.2, "dev_compute": 0.5}, "0.25": {"bias": 1.0, "dev_compute": 0.25}}
    study.write_text(json.dumps({"stage2": duo["exp2"], "checkpoint": "1epoch.pth", "learned_bias": biases}))
    mix = str(tmp_path / "mix.json")
    duo_speed.main(["mix", "--study", str(study), "--data", str(root), "--utts", "3", "--repeats", "1",
                    "--runs", "2", "--threads", "1", "--out", mix])
    with open(mix) as f:
        measured = json.load(f)
    assert set(measured["mix"]) == {"0.5", "0.25"} and measured["blocks"] == 2 and measured["utts"] == 3
    for slots in measured["mix"].values():
        assert len(slots) == NUM_SLOTS and all(abs(sum(p) - 1) < 1e-5 for p in slots.values())
    assert all(len(t["random_at_mix_over_learned"]) == 2 for t in measured["timing"].values())

    tiny = os.path.join("conf", "tiny", "train_asr_{}.yaml")
    monkeypatch.setitem(duo_speed.SIZES, "tiny", (tiny.format("conformer"), tiny.format("duo_conformer"), {}))
    out = str(tmp_path / "duo_speed.json")
    duo_speed.main(["speed", "--mix", mix, "--sizes", "tiny", "--cases", "1x0.5", "2x0.3", "--warmup", "0",
                    "--repeats", "1", "--runs", "2", "--threads", "1", "--out", out])
    with open(out) as f:
        data = json.load(f)
    cases = data["sizes"]["tiny"]["cases"]
    names = {"dense", "bound@1", "bound@0.75", "bound@0.5", "bound@0.25", "bound@0", "big", "small",
             "static@0.75", "static@0.5", "static@0.25", "learned@0.5", "learned@0.25"}
    assert [(c["batch"], c["seconds"]) for c in cases] == [(1, 0.5), (2, 0.3)]
    for case in cases:
        assert len(case["runs"]) == 2
        for run in case["runs"]:
            v = run["variants"]
            assert set(v) == names and all(len(r["times_s"]) == 1 for r in v.values())
            assert v["big"]["compute"] == pytest.approx(1.0) and v["small"]["compute"] == pytest.approx(COSTS["small"])
            # 4 slots: 0.75 keeps 3, 0.5 keeps 2, 0.25 keeps 1 (spread over the depth)
            assert [v[f"static@{c}"]["compute"] for c in ("0.75", "0.5", "0.25")] == pytest.approx([0.75, 0.5, 0.25])
            assert 0 <= v["learned@0.5"]["compute"] <= 1
    assert duo_speed.kept_slots(24, 0.5) == list(range(1, 24, 2)) and duo_speed.kept_slots(4, 0) == []
    text = (tmp_path / "duo_speed.md").read_text()
    assert "## tiny" in text and "| static@0.5 | 0.500 |" in text
    assert len([line for line in text.splitlines() if line.startswith("| learned@0.25 |")]) == 1
    with pytest.raises(SystemExit):
        duo_speed.main(["speed", "--mix", mix, "--sizes", "huge", "--out", out])
    section = "\n".join(duo_speed.summary_section(data))
    assert section.count("| tiny |") == 2 and "x the bound's time" in section
    twice = [r["variants"]["bound@1"]["median_s"] / r["variants"]["dense"]["median_s"] for r in cases[0]["runs"]]
    noise = max(max(twice), 1 / min(twice))
    assert "| tiny | 1 x 0.5 | " in section and f" ms | {noise:.2f}x | " in section
