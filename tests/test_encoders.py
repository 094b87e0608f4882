"""ESPnet adapters: encoders, registration, model build from the YAMLs in conf/."""
import argparse
import collections
import glob
import inspect
import os
import sys

import pytest
import torch
import yaml
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
from espnet2.tasks.asr import ASRTask, encoder_choices, model_choices
from espnet2.tasks.lm import LMTask

import espnet_omnirouter  # noqa: F401
from espnet_omnirouter.encoders import (
    OmniRouterConformerEncoder,
    OmniRouterTransformerEncoder,
    SwitchConformerEncoder,
    SwitchTransformerEncoder,
)
from espnet_omnirouter.moe import MoEFeedForward, moe_aux_losses, moe_layer_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=3, input_layer="conv2d")
CONFORMER = dict(SMALL, macaron_style=True, rel_pos_type="latest", cnn_module_kernel=5)
# ESPnet's own dense encoders depend on the batch in two places that are not ours: conv2d
# subsampling counts 1-2 padded frames as real, and the Conformer convolution module runs
# without a padding mask.  Batch-invariance tests therefore use linear input and no
# convolution module, which makes ESPnet's dense encoders exactly batch-invariant.
EXACT_TRANSFORMER = dict(SMALL, input_layer="linear")
EXACT_CONFORMER = dict(CONFORMER, input_layer="linear", use_cnn_module=False)


def router_keys(module):
    return [k for k in module.state_dict() if "router" in k]


def test_registered_names():
    assert encoder_choices.classes["switch_conformer"] is SwitchConformerEncoder
    assert encoder_choices.classes["omni_router_conformer"] is OmniRouterConformerEncoder
    assert encoder_choices.classes["switch_transformer"] is SwitchTransformerEncoder
    assert encoder_choices.classes["omni_router_transformer"] is OmniRouterTransformerEncoder
    assert encoder_choices.classes["duo_conformer"].__name__ == "DuoConformerEncoder"
    assert encoder_choices.classes["duo_transformer"].__name__ == "DuoTransformerEncoder"
    assert model_choices.classes["moe_espnet"].__name__ == "MoEASRModel"


def test_signature_lists_espnet_and_moe_keys():
    params = inspect.signature(OmniRouterConformerEncoder).parameters
    for key in ("num_experts", "router_groups", "moe_macaron", "cnn_module_kernel", "rel_pos_type"):
        assert key in params
    assert "router_groups" not in inspect.signature(SwitchConformerEncoder).parameters
    assert "moe_macaron" not in inspect.signature(SwitchTransformerEncoder).parameters


@pytest.mark.parametrize(
    "cls, kwargs, n_moe",
    [
        (SwitchConformerEncoder, CONFORMER, 6),
        (OmniRouterConformerEncoder, CONFORMER, 6),
        (SwitchConformerEncoder, dict(CONFORMER, moe_macaron=False, moe_layers=[0, 2]), 2),
        (SwitchTransformerEncoder, SMALL, 3),
        (OmniRouterTransformerEncoder, SMALL, 3),
    ],
)
def test_router_ownership(cls, kwargs, n_moe):
    enc = cls(20, num_experts=4, **kwargs)
    assert len(enc.moe_ffns()) == n_moe
    keys = router_keys(enc)
    if cls.shared_router:
        assert keys == ["routers.0.weight"]
        assert all(m.router is enc.routers[0] for m in enc.moe_ffns())
    else:
        assert len(keys) == n_moe and len({id(m.router) for m in enc.moe_ffns()}) == n_moe


def test_router_groups():
    enc = OmniRouterConformerEncoder(20, num_experts=4, router_groups=3, **CONFORMER)
    assert router_keys(enc) == [f"routers.{i}.weight" for i in range(3)]
    ffns = enc.moe_ffns()  # 6 FFNs, 2 per group, consecutive
    assert [list(enc.routers).index(m.router) for m in ffns] == [0, 0, 1, 1, 2, 2]


def test_router_per_ffn_position():
    enc = OmniRouterConformerEncoder(20, num_experts=4, router_per_ffn_position=True, **CONFORMER)
    assert router_keys(enc) == ["routers.0.weight", "routers.1.weight"]
    ffns = enc.moe_ffns()  # 3 blocks x (macaron, second FFN): alternate between the two routers
    assert [list(enc.routers).index(m.router) for m in ffns] == [0, 1, 0, 1, 0, 1]
    x = torch.randn(2, 40, 20)
    y, _, _ = enc(x, torch.tensor([40, 30]))
    aux = moe_aux_losses(enc.moe_records())
    (y.sum() + aux["lb"] + aux["z"]).backward()
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in enc.routers)
    fresh = OmniRouterConformerEncoder(20, num_experts=4, router_per_ffn_position=True, **CONFORMER)
    fresh.load_state_dict(enc.state_dict(), strict=True)
    enc.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, torch.tensor([40, 30]))[0], enc(x, torch.tensor([40, 30]))[0])
    with pytest.raises(RuntimeError, match="routers.1.weight"):  # a one-router Omni refuses it
        OmniRouterConformerEncoder(20, num_experts=4, **CONFORMER).load_state_dict(enc.state_dict(), strict=True)
    # without macaron FFNs there is one position: one router
    one = OmniRouterConformerEncoder(20, num_experts=4, router_per_ffn_position=True, moe_macaron=False, **CONFORMER)
    assert router_keys(one) == ["routers.0.weight"]


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (OmniRouterConformerEncoder, dict(CONFORMER, router_groups=3), r"router_per_ffn_position: true .* cannot be combined with router_groups: 3"),
        (SwitchConformerEncoder, CONFORMER, r"encoder_conf\.router_per_ffn_position is for omni_router_conformer"),
        (OmniRouterTransformerEncoder, SMALL, r"encoder_conf\.router_per_ffn_position is for omni_router_conformer"),
    ],
)
def test_router_per_ffn_position_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(20, num_experts=4, router_per_ffn_position=True, **kwargs)


def test_strict_state_dict_roundtrip():
    a = OmniRouterConformerEncoder(20, num_experts=4, **CONFORMER)
    b = OmniRouterConformerEncoder(20, num_experts=4, **CONFORMER)
    b.load_state_dict(a.state_dict(), strict=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(
    "cls", [SwitchConformerEncoder, OmniRouterConformerEncoder, SwitchTransformerEncoder, OmniRouterTransformerEncoder]
)
def test_batching_does_not_change_eval_output(cls):
    torch.manual_seed(0)
    kwargs = EXACT_CONFORMER if "Conformer" in cls.__name__ else EXACT_TRANSFORMER
    enc = cls(20, num_experts=4, **kwargs).eval()
    for r in [r for r in enc.modules() if hasattr(r, "weight") and r.__class__.__name__ == "Router"]:
        torch.nn.init.normal_(r.weight, std=1.0)  # make routing sensitive to any leak
    short, long_ = torch.randn(1, 40, 20), torch.randn(1, 90, 20)
    with torch.no_grad():
        alone, olen, _ = enc(short, torch.tensor([40]))
        batch = torch.zeros(2, 90, 20)
        batch[0, :40], batch[1] = short[0], long_[0]
        both, olens, _ = enc(batch, torch.tensor([40, 90]))
    n = int(olen[0])
    assert int(olens[0]) == n
    torch.testing.assert_close(both[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
    # Padded frames never reach the router.
    assert all(r.routing.expert.shape[0] == int(olens.sum()) for r in enc.moe_records())


@pytest.mark.parametrize(
    "moe_cls, dense_cls, kwargs",
    [
        (SwitchConformerEncoder, ConformerEncoder, CONFORMER),
        (OmniRouterConformerEncoder, ConformerEncoder, CONFORMER),
        (OmniRouterTransformerEncoder, TransformerEncoder, SMALL),
    ],
)
def test_training_step_waits_for_the_device_once_more_than_dense(moe_cls, dense_cls, kwargs):
    """On the path CUDA takes (grouped_mm experts), a training step with padding, the
    auxiliary losses and the routing statistics adds exactly one operator that makes the
    host wait for the GPU to the dense encoder's: the nonzero of the padding, shared by all
    MoE FFNs.  Counted on CPU tensors with benchmarks/op_count.py's dispatch-mode counter."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from op_count import OpCounter, summarize

    torch.manual_seed(0)
    xs, ilens = torch.randn(3, 60, 20), torch.tensor([60, 47, 31])
    moe = moe_cls(20, num_experts=4, **kwargs).train()
    for ffn in moe.moe_ffns():
        ffn.experts.impl = "grouped_mm"
    syncs = {}
    for name, enc in (("dense", dense_cls(20, **kwargs).train()), ("moe", moe)):
        with OpCounter() as counter:
            out, _, _ = enc(xs, ilens)
            loss = out.sum()
            if name == "moe":
                records = enc.moe_records()
                loss = loss + sum(moe_aux_losses(records).values())
                moe_layer_stats(records)
            loss.backward()
        syncs[name] = collections.Counter(summarize(counter.ops)["sync_ops"])
    assert len(records) == len(moe.moe_ffns()) >= 3 and all(records)
    assert not records[0].valid.all()  # the batch was padded
    assert syncs["moe"] - syncs["dense"] == collections.Counter({"nonzero": 1})
    assert moe._padding_hook.mask is None and moe._padding_hook.padding is None  # nothing kept


@pytest.mark.parametrize(
    "moe_cls, dense_cls, kwargs, lengths",
    [
        (SwitchConformerEncoder, ConformerEncoder, CONFORMER, [50, 50]),
        (OmniRouterConformerEncoder, ConformerEncoder, CONFORMER, [50, 50]),
        (OmniRouterConformerEncoder, ConformerEncoder, EXACT_CONFORMER, [50, 33]),
        (SwitchTransformerEncoder, TransformerEncoder, SMALL, [50, 33]),
        (OmniRouterTransformerEncoder, TransformerEncoder, SMALL, [50, 33]),
    ],
)
def test_one_expert_equals_dense_encoder(moe_cls, dense_cls, kwargs, lengths):
    """With E = 1 the gate is 1 and the MoE encoder is ESPnet's dense encoder.  (On padded
    batches ESPnet's Conformer convolution sees the FFN output of padded frames, which is
    0 for MoE; hence full-length inputs there.)"""
    torch.manual_seed(0)
    dense = dense_cls(20, **kwargs).eval()
    moe = moe_cls(20, num_experts=1, **kwargs).eval()
    state = {}
    for key, value in dense.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if prefix.endswith(("feed_forward.w_1", "feed_forward.w_2", "feed_forward_macaron.w_1", "feed_forward_macaron.w_2")):
            ffn, lin = prefix.rsplit(".", 1)
            n = lin[-1]
            state[f"{ffn}.experts.{'w' if leaf == 'weight' else 'b'}{n}"] = (
                value.t().unsqueeze(0) if leaf == "weight" else value.unsqueeze(0)
            )
        else:
            state[key] = value
    missing, unexpected = moe.load_state_dict(state, strict=False)
    assert unexpected == []
    assert all("router" in k for k in missing)
    x = torch.randn(2, 50, 20)
    ilens = torch.tensor(lengths)
    with torch.no_grad():
        y_dense, l_dense, _ = dense(x, ilens)
        y_moe, l_moe, _ = moe(x, ilens)
    assert torch.equal(l_dense, l_moe)
    for b in range(2):
        n = int(l_dense[b])
        torch.testing.assert_close(y_moe[b, :n], y_dense[b, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_experts=0), "num_experts"),
        (dict(num_experts=2, top_k=3), "top_k"),
        (dict(router_groups=4), "router_groups"),
        (dict(moe_layers=[0, 7]), "moe_layers"),
        (dict(positionwise_layer_type="conv1d"), "positionwise_layer_type"),
        (dict(capacity_factor=-1.0), "capacity_factor"),
        (dict(router_jitter=-0.5), "router_jitter"),
    ],
)
def test_encoder_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OmniRouterConformerEncoder(20, **dict(CONFORMER, num_experts=kwargs.pop("num_experts", 4), **kwargs))


def test_switch_rejects_router_groups():
    with pytest.raises(ValueError, match="router_groups"):
        SwitchConformerEncoder(20, num_experts=4, router_groups=2, **CONFORMER)


@pytest.mark.parametrize("key", ["moe_aux_weight", "moe_zloss_weight"])
def test_negative_weight_error(key, tmp_path):
    config = os.path.join(ROOT, "conf", "tiny", "train_asr_omni_router_conformer.yaml")
    args = build_args(config, tmp_path)
    args.model_conf[key] = -1.0
    with pytest.raises(ValueError, match=key):
        ASRTask.build_model(args)


def build_args(config, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", "A", "B", "<space>", "<sos/eos>"]) + "\n")
    parser = ASRTask.get_parser()
    return parser.parse_args(["--config", config, "--token_list", str(tokens), "--output_dir", str(tmp_path)])


def shipped_configs(pattern):
    """Every shipped YAML matching ``pattern`` (symlinked recipe copies counted once)."""
    return sorted({
        os.path.realpath(c)
        for d in (("conf",), ("conf", "tiny"), ("conf", "tuning"), ("egs2", "*", "asr1", "conf"))
        for c in glob.glob(os.path.join(ROOT, *d, pattern))
    })


CONFIGS = shipped_configs("train_asr_*.yaml")
LM_CONFIGS = shipped_configs("train_lm*.yaml")


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.relpath(c, ROOT) for c in CONFIGS])
def test_build_model_from_conf(config, tmp_path):
    with open(config) as f:
        conf = yaml.safe_load(f)
    model = ASRTask.build_model(build_args(config, tmp_path))
    keys = router_keys(model.encoder)
    if conf["encoder"].startswith("omni_router") and conf["encoder_conf"].get("router_per_ffn_position"):
        assert len(keys) == 2  # macaron and second FFN positions
    elif conf["encoder"].startswith("omni_router"):
        assert len(keys) == conf["encoder_conf"].get("router_groups", 1)
    elif conf["encoder"].startswith("switch"):
        assert len(keys) == len(model.encoder.moe_ffns()) > 0
    elif conf["encoder"].startswith("duo"):
        shared = conf["encoder_conf"].get("duo_router") == "shared"
        assert len(keys) == (1 if shared else len(model.encoder.duo_slots())) > 0
    else:
        assert keys == [] and not any(isinstance(m, MoEFeedForward) for m in model.modules())


def test_every_training_config_is_tested():
    every = set(shipped_configs("train_*.yaml"))
    assert every == set(CONFIGS) | set(LM_CONFIGS) and LM_CONFIGS


@pytest.mark.parametrize("config", LM_CONFIGS, ids=[os.path.relpath(c, ROOT) for c in LM_CONFIGS])
def test_build_lm_from_conf(config, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", "A", "B", "<space>", "<sos/eos>"]) + "\n")
    parser = LMTask.get_parser()
    args = parser.parse_args(["--config", config, "--token_list", str(tokens), "--output_dir", str(tmp_path)])
    model = LMTask.build_model(args)
    tokens_in = torch.tensor([[2, 3, 4]])
    assert model.lm(tokens_in, None)[0].shape == (1, 3, 6)
