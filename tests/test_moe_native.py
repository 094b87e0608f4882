"""The C kernels of the native CPU inference path (espnet_omnirouter/moe/native.py): build,
router, packed weights and their refresh, switching off.  Their outputs against the training
path, layer by layer, are in tests/test_moe_compile.py."""
import os
import subprocess
import sys

import pytest
import torch

from espnet_omnirouter.moe import Experts, MoEFeedForward, Router, native


def test_builds_into_the_cache_dir_and_checks(tmp_path):
    """A fresh process builds the library into $ESPNET_OMNIROUTER_CACHE and passes its check;
    ESPNET_OMNIROUTER_NATIVE=0 turns it off, and says so."""
    code = "from espnet_omnirouter.moe import native; print(native.available(), native.why_not or '-')"
    env = {**os.environ, "ESPNET_OMNIROUTER_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["True", "-"], out.stdout + out.stderr
    assert [p.name.startswith("native_cpu-") and p.suffix == ".so" for p in tmp_path.iterdir()] == [True]
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


def test_bad_expert_index_is_an_error():
    assert native.available(), native.why_not
    experts = Experts(4, 16, 32, torch.nn.ReLU()).eval()
    flat = torch.randn(5, 16)
    with torch.inference_mode(), pytest.raises(ValueError, match="expert outside 0..3"):
        experts.native(flat, None, torch.tensor([[0], [1], [4], [2], [3]]), torch.ones(5, 1))
