"""ONNX export of encoders: onnxruntime gives PyTorch's outputs (espnet_omnirouter.export)."""
import os

import numpy as np
import pytest
import torch
import yaml

import onnx  # the [onnx] extra (make install puts it in .venv)
import onnxruntime as ort
import espnet_omnirouter  # noqa: F401  (registers our encoders)
from espnet2.tasks.asr import encoder_choices

from espnet_omnirouter.export.encoder import export_encoder, unsupported
from espnet_omnirouter.inference.duo import DuoDecodeConfig, apply_duo_policy
from espnet_omnirouter.moe import DuoPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATS = 40  # n_mels of the tiny configs
# (batch rows' lengths in frames): one utterance, a padded batch, a batch without padding,
# and lengths other than the captured example's (120, 90)
BATCHES = [[57], [200, 150, 61], [333, 333], [120, 90]]


def tiny_encoder(config: str, **overrides) -> torch.nn.Module:
    with open(os.path.join(ROOT, "conf", "tiny", config)) as f:
        conf = yaml.safe_load(f)
    cls = encoder_choices.get_class(conf["encoder"])
    torch.manual_seed(0)
    return cls(FEATS, **{**conf["encoder_conf"], **overrides}).eval()


def assert_same_outputs(encoder, path):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for lengths in BATCHES:
        lens = torch.tensor(lengths)
        feats = torch.randn(len(lengths), max(lengths), FEATS, generator=gen)
        with torch.no_grad():
            out, out_lens, _ = encoder(feats, lens)
        got, got_lens = session.run(None, {"feats": feats.numpy(), "feats_length": lens.numpy()})
        assert got_lens.tolist() == out_lens.tolist(), lengths
        assert got.shape == tuple(out.shape), lengths
        for b, n in enumerate(out_lens.tolist()):  # frames past a row's length are undefined
            np.testing.assert_allclose(got[b, :n], out[b, :n].numpy(), rtol=1e-4, atol=1e-4, err_msg=str(lengths))


def op_counts(path):
    counts = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def duo_encoder(policy: DuoDecodeConfig):
    encoder = tiny_encoder("train_asr_duo_conformer_router.yaml")
    for name in encoder.duo_names:  # sharper routers than at initialisation: every path is taken
        encoder.get_submodule(name).router.weight.data.mul_(30)
    apply_duo_policy(encoder, policy)
    return encoder


DUO_POLICIES = {
    "big": DuoDecodeConfig(policy="big"),
    "static": DuoDecodeConfig(policy="static", pattern="BSKB"),
    "learned": DuoDecodeConfig(policy="learned", cost_bias=0.3),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name)`` -> (encoder, path of its ONNX file); each encoder exported once."""
    root, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(name):
        if name not in cache:
            encoder = duo_encoder(DUO_POLICIES[name[4:]]) if name.startswith("duo_") else tiny_encoder(name)
            path = str(root / f"{len(cache)}.onnx")
            export_encoder(encoder, path, FEATS)
            cache[name] = (encoder, path)
        return cache[name]

    return get


@pytest.mark.parametrize("name", [
    "train_asr_conformer.yaml",            # ESPnet's dense Conformer, for reference
    "train_asr_switch_conformer.yaml",
    "train_asr_omni_router_conformer.yaml",
    "train_asr_switch_transformer.yaml",
    "train_asr_omni_router_e_branchformer.yaml",
    "duo_big", "duo_static", "duo_learned",
])
def test_exported_encoder_gives_pytorchs_outputs(name, exported):
    encoder, path = exported(name)
    assert_same_outputs(encoder, path)
    if name == "duo_learned":
        paths = torch.cat([r.routing.expert[:, 0] for r in encoder.duo_records()])
        assert paths.unique().numel() == 3, "the test needs frames on every path"


def test_moe_slots_export_sparse_dispatch(exported):
    """Each expert gathers its own frames (one NonZero per expert and MoE FFN), rather than a
    dense mixture of every expert on every frame."""
    encoder, path = exported("train_asr_switch_conformer.yaml")
    slots = len(encoder.slot_names)
    experts = encoder.get_submodule(encoder.slot_names[0]).experts.num_experts
    dense = op_counts(exported("train_asr_conformer.yaml")[1])
    assert op_counts(path).get("NonZero", 0) - dense.get("NonZero", 0) >= slots * experts


def test_duo_paths_export_only_their_own_ffns(exported):
    """All-big has the dense Conformer's matmuls; pattern BSKB two fewer (the skip slot has
    none, the small slot its own two)."""
    matmuls = {}
    for name in ("train_asr_conformer.yaml", "duo_big", "duo_static"):
        counts = op_counts(exported(name)[1])
        matmuls[name] = counts.get("MatMul", 0) + counts.get("Gemm", 0)
    assert matmuls["duo_big"] == matmuls["train_asr_conformer.yaml"]
    assert matmuls["duo_static"] == matmuls["train_asr_conformer.yaml"] - 2


@pytest.mark.parametrize("config, setup, key", [
    ("train_asr_omni_router_contextual_block_conformer.yaml", None, "streaming"),
    ("train_asr_duo_conformer.yaml", None, "random policy"),
    ("train_asr_duo_conformer_router.yaml", "per_utterance", "per-utterance path"),
])
def test_unsupported_encoders_are_refused_by_name(config, setup, key, tmp_path):
    encoder = tiny_encoder(config)
    if setup == "per_utterance":
        encoder.set_duo_policies([DuoPolicy("fixed", path=torch.tensor([0, 2]))] * len(encoder.duo_names))
    path = tmp_path / "encoder.onnx"
    with pytest.raises(ValueError, match=key):
        export_encoder(encoder, str(path), FEATS)
    assert key in unsupported(encoder) and not path.exists()
