"""RoE hyper-parallel inference."""
import math
import os

import pytest
import soundfile
import torch

from espnet_omnirouter.encoders import OmniRouterConformerEncoder
from espnet_omnirouter.inference import RoEConfig, RoEEncoder, average_log_posteriors, ctc_greedy
from espnet_omnirouter.inference.roe import _GumbelSelection, _NoiseState
from espnet_omnirouter.moe import Router
from tiny_asr_data import PYTHON, ROOT, run


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_sampling_follows_tempered_softmax(tau):
    torch.manual_seed(0)
    router = Router(4, 5).eval()
    torch.nn.init.normal_(router.weight, std=1.0)
    x = torch.randn(1, 4).expand(20000, 4)  # one frame, 20000 draws
    state = _NoiseState(torch.Generator().manual_seed(1))
    router.selection_noise = _GumbelSelection(0, tau, state, shared=False)
    routing = router(x)
    counts = torch.bincount(routing.expert[:, 0], minlength=5).double()
    expected = torch.softmax(routing.logits[0].double() / tau, dim=0)
    n = x.shape[0]
    # Each count is Binomial(n, p): allow 5 standard deviations.
    bound = 5 * torch.sqrt(n * expected * (1 - expected)) + 1
    assert torch.all((counts - n * expected).abs() <= bound), (counts / n, expected)
    # Gates are still the clean softmax probabilities of the chosen experts.
    torch.testing.assert_close(routing.gate[:, 0], routing.probs.gather(1, routing.expert)[:, 0])


def test_config_errors():
    with pytest.raises(ValueError, match="roe_clean_layers"):
        RoEConfig(samples=2, clean_layers=2).check(4)
    with pytest.raises(ValueError, match="roe_aggregate"):
        RoEConfig(samples=2, aggregate="max").check(4)
    with pytest.raises(ValueError, match="roe_tau has 3 values"):
        RoEConfig(samples=2, tau=[1, 1, 1]).check(4)
    assert RoEConfig(tau=[1, 2, 3, 4], clean_layers=1).taus(4) == [0.0, 2.0, 3.0, 0.0]


def small_encoder():
    torch.manual_seed(0)
    enc = OmniRouterConformerEncoder(
        20, output_size=16, attention_heads=2, linear_units=32, num_blocks=4, num_experts=4,
        macaron_style=True, rel_pos_type="latest", cnn_module_kernel=5,
    ).eval()
    torch.nn.init.normal_(enc.routers[0].weight, std=1.0)
    return enc


def run_roe(enc, config, x, ilens):
    roe = RoEEncoder(enc, config)
    with roe.capture(), torch.no_grad():
        clean, olens, _ = enc(x, ilens)
    return roe, clean, olens, roe.noisy_outputs()


def test_clean_prefix_runs_once_and_copies_are_batched():
    enc = small_encoder()  # 8 MoE FFNs in 4 blocks; clean_layers=3 -> first noisy FFN in block 1
    calls = []
    for i, block in enumerate(enc.encoders):
        block.register_forward_pre_hook(lambda m, a, i=i: calls.append((i, a[0][0].shape[0])))
    x, ilens = torch.randn(1, 60, 20), torch.tensor([60])
    roe, clean, _, noisy = run_roe(enc, RoEConfig(samples=3, tau=1.0, clean_layers=3), x, ilens)
    assert roe.start_block == 1
    assert calls == [(0, 1), (1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3)]
    assert noisy.shape == (3, *clean.shape)
    assert set(roe.flip_rates) == {3, 4}  # the noisy MoE FFNs
    assert all(0.0 <= r <= 1.0 for r in roe.flip_rates.values()) and max(roe.flip_rates.values()) > 0
    # The copies differ from each other (independent noise).
    assert not torch.allclose(noisy[0], noisy[1])


def test_tau_zero_copies_equal_clean_output():
    enc = small_encoder()
    x, ilens = torch.randn(1, 60, 20), torch.tensor([60])
    roe, clean, _, noisy = run_roe(enc, RoEConfig(samples=2, tau=0.0, clean_layers=0), x, ilens)
    assert roe.noisy == []
    for copy in noisy:
        torch.testing.assert_close(copy, clean)


def test_shared_noise_reuses_one_draw_per_frame():
    enc = small_encoder()
    x, ilens = torch.randn(1, 60, 20), torch.tensor([60])
    config = RoEConfig(samples=2, tau=1e6, clean_layers=1, shared_noise=True)  # noise dominates the logits
    roe = RoEEncoder(enc, config)
    experts = {}
    for i, ffn in enumerate(enc.moe_ffns()):
        ffn.register_forward_hook(lambda m, a, o, i=i: experts.__setitem__(i, m.last.routing.expert[:, 0].clone()))
    with roe.capture(), torch.no_grad():
        enc(x, ilens)
    roe.noisy_outputs()
    # With the same Gumbel draw per frame and negligible logits, every noisy layer picks the same experts.
    noisy = roe.noisy
    for i in noisy[1:]:
        assert torch.equal(experts[i], experts[noisy[0]])


def test_average_log_posteriors():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log().unsqueeze(1)  # [K=2, T=1, V=2]
    torch.testing.assert_close(average_log_posteriors(p, "prob").exp(), torch.tensor([[0.7, 0.3]]))
    geo = torch.tensor([math.sqrt(0.45), math.sqrt(0.05)])
    torch.testing.assert_close(average_log_posteriors(p, "logprob").exp(), (geo / geo.sum()).unsqueeze(0))
    best_path = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 2, 2, 0, 2]), 3).float()
    assert ctc_greedy(best_path, blank=0) == [1, 2, 2]


@pytest.fixture(scope="module")
def utterances(tiny_omni):
    data, _ = tiny_omni
    with open(os.path.join(data, "wav.scp")) as f:
        return [soundfile.read(line.split()[1])[0] for line in f]


def speech2text(exp, **roe):
    from espnet_omnirouter.inference.speech2text import RoESpeech2Text

    return RoESpeech2Text(
        asr_train_config=os.path.join(exp, "config.yaml"), asr_model_file=os.path.join(exp, "1epoch.pth"),
        beam_size=2, ctc_weight=0.5, device="cpu", **roe,
    )


def test_k1_and_tau0_give_the_normal_transcripts(tiny_omni, utterances):
    from espnet2.bin.asr_inference import Speech2Text

    _, exp = tiny_omni
    normal = Speech2Text(
        asr_train_config=os.path.join(exp, "config.yaml"), asr_model_file=os.path.join(exp, "1epoch.pth"),
        beam_size=2, ctc_weight=0.5, device="cpu",
    )
    expected = [normal(u)[0][0] for u in utterances]
    assert any(expected)
    k1 = speech2text(exp, roe_samples=1, roe_tau=2.0)
    assert [k1(u)[0][0] for u in utterances] == expected
    tau0 = speech2text(exp, roe_samples=3, roe_tau=0.0, roe_clean_layers=0)
    assert [tau0(u)[0][0] for u in utterances] == expected
    # Greedy CTC through the same path.
    assert [k1.greedy(u) for u in utterances] == [tau0.greedy(u) for u in utterances]


def test_roe_decoding_logs_flip_rates(tiny_omni, utterances):
    _, exp = tiny_omni
    s2t = speech2text(exp, roe_samples=4, roe_tau=5.0, roe_clean_layers=1)
    text = s2t(utterances[0])[0][0]
    assert isinstance(text, str)
    assert set(s2t.flip_rates) == {1, 2}  # 4 MoE FFNs (2 blocks x macaron+FFN); first and last clean
    assert max(s2t.flip_rates.values()) > 0
    posteriors = s2t.ctc_log_posteriors(utterances[0])
    torch.testing.assert_close(posteriors.exp().sum(-1), torch.ones(posteriors.shape[0]))


def test_inference_cli_accepts_roe_options(tiny_omni, tmp_path):
    data, exp = tiny_omni
    out = tmp_path / "decode"
    log = run(
        [
            PYTHON, "-m", "espnet_omnirouter.bin.asr_inference",
            "--asr_train_config", os.path.join(exp, "config.yaml"),
            "--asr_model_file", os.path.join(exp, "1epoch.pth"),
            "--data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
            "--output_dir", str(out), "--ngpu", "0", "--batch_size", "1", "--beam_size", "2",
            "--ctc_weight", "0.5", "--roe_samples", "2", "--roe_tau", "0,1,1,0", "--roe_clean_layers", "0",
        ],
        str(tmp_path / "decode.log"),
    )
    assert "RoE expert flip rate per MoE FFN" in log
    assert len((out / "1best_recog" / "text").read_text().splitlines()) == 8
