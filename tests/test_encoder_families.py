"""E-Branchformer and contextual-block (streaming) MoE/Duo encoders: ESPnet's own encoder
test grids run on our classes, equality with the dense family encoder, strict reload,
streaming vs full-utterance block processing, what is routed and recorded, and errors."""
import pytest
import torch
from typeguard import TypeCheckError
from espnet2.asr.encoder.contextual_block_conformer_encoder import ContextualBlockConformerEncoder
from espnet2.asr.encoder.contextual_block_transformer_encoder import ContextualBlockTransformerEncoder
from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder
from espnet2.tasks.asr import encoder_choices

import espnet_omnirouter  # noqa: F401
from espnet_omnirouter.encoders import (
    DuoEBranchformerEncoder,
    OmniRouterContextualBlockConformerEncoder,
    OmniRouterContextualBlockTransformerEncoder,
    OmniRouterEBranchformerEncoder,
    SwitchContextualBlockConformerEncoder,
    SwitchContextualBlockTransformerEncoder,
    SwitchEBranchformerEncoder,
)
from espnet_omnirouter.inference.duo import DuoDecodeConfig, apply_duo_policy
from espnet_omnirouter.moe import moe_aux_losses, moe_layer_stats

E_BRANCHFORMERS = [SwitchEBranchformerEncoder, OmniRouterEBranchformerEncoder, DuoEBranchformerEncoder]
BLOCK_ENCODERS = [
    (SwitchContextualBlockConformerEncoder, ContextualBlockConformerEncoder),
    (OmniRouterContextualBlockConformerEncoder, ContextualBlockConformerEncoder),
    (SwitchContextualBlockTransformerEncoder, ContextualBlockTransformerEncoder),
    (OmniRouterContextualBlockTransformerEncoder, ContextualBlockTransformerEncoder),
]
MOE = dict(num_experts=2)
# ESPnet's test_e_branchformer_encoder.py arguments, with the FFNs our classes need.
EBF = dict(output_size=2, attention_heads=2, cgmlp_linear_units=4, cgmlp_conv_kernel=3, num_blocks=2,
           use_ffn=True, macaron_ffn=True, linear_units=8)
# Its grid, one option changed at a time (the full product is 3840 encoders per class).
EBF_GRID = [
    *(dict(input_layer=v) for v in ["linear", "conv2d", "conv2d2", "conv2d6", "conv2d8", "embed"]),
    dict(use_linear_after_conv=True),
    *(dict(rel_pos_type=r, pos_enc_layer_type=p, attention_layer_type=a) for r, p, a in [
        ("legacy", "abs_pos", "selfattn"), ("latest", "rel_pos", "rel_selfattn"), ("legacy", "rel_pos", "rel_selfattn"),
        ("legacy", "legacy_rel_pos", "legacy_rel_selfattn"), ("legacy", "abs_pos", "fast_selfattn")]),
    dict(max_pos_emb_len=128),
    dict(macaron_ffn=False),
    dict(linear_units=16),
    dict(merge_conv_kernel=31),
    dict(layer_drop_rate=0.1),
]
SMALL_EBF = dict(output_size=16, attention_heads=2, cgmlp_linear_units=16, cgmlp_conv_kernel=3, num_blocks=2,
                 use_ffn=True, macaron_ffn=True, linear_units=32, input_layer="conv2d")
BLOCK = dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=2, input_layer="conv2d",
             block_size=8, hop_size=4, look_ahead=2)


def our_kwargs(cls):
    return dict(duo_small_units=2) if cls is DuoEBranchformerEncoder else MOE


def ffn_state(dense_state, slot_names, duo):
    """A dense encoder's state dict with each FFN's Linear weights as a 1-expert MoE FFN's
    (or a Duo slot's big path)."""
    state = dict(dense_state)
    prefix = "experts.paths.0" if duo else "experts"
    for name in slot_names:
        for linear, n in (("w_1", "1"), ("w_2", "2")):
            state[f"{name}.{prefix}.w{n}"] = state.pop(f"{name}.{linear}.weight").t().unsqueeze(0)
            state[f"{name}.{prefix}.b{n}"] = state.pop(f"{name}.{linear}.bias").unsqueeze(0)
    return state


def dense_twin(cls, dense_cls, kwargs):
    """(dense, ours) in eval mode, ours holding the dense weights with one expert / all big."""
    torch.manual_seed(0)
    dense = dense_cls(20, **kwargs).eval()
    duo = cls is DuoEBranchformerEncoder
    ours = cls(20, **({} if duo else dict(num_experts=1)), **kwargs).eval()
    names = ours.slot_names
    missing, unexpected = ours.load_state_dict(ffn_state(dense.state_dict(), names, duo), strict=False)
    assert not unexpected and all("router" in k or "paths.1" in k for k in missing)
    if duo:
        apply_duo_policy(ours, DuoDecodeConfig("big"))
    return dense, ours


def test_registered_names():
    for name, cls in [
        ("switch_e_branchformer", SwitchEBranchformerEncoder),
        ("omni_router_e_branchformer", OmniRouterEBranchformerEncoder),
        ("duo_e_branchformer", DuoEBranchformerEncoder),
        ("switch_contextual_block_conformer", SwitchContextualBlockConformerEncoder),
        ("omni_router_contextual_block_conformer", OmniRouterContextualBlockConformerEncoder),
        ("switch_contextual_block_transformer", SwitchContextualBlockTransformerEncoder),
        ("omni_router_contextual_block_transformer", OmniRouterContextualBlockTransformerEncoder),
    ]:
        assert encoder_choices.classes[name] is cls


# ---------------------------------------------------------------- E-Branchformer


@pytest.mark.parametrize("cls", E_BRANCHFORMERS)
@pytest.mark.parametrize("option", EBF_GRID, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_e_branchformer_forward_backward_grid(cls, option):
    """ESPnet's test_encoder_forward_backward, on our classes, with the auxiliary losses."""
    conf = {**EBF, "input_layer": "conv2d", **option}
    enc = cls(20, **our_kwargs(cls), **conf).train()
    x = torch.randint(0, 10, [2, 32]) if conf["input_layer"] == "embed" else torch.randn(2, 32, 20, requires_grad=True)
    y, olens, _ = enc(x, torch.LongTensor([32, 28]))
    loss = y.sum()
    if cls is not DuoEBranchformerEncoder:
        records = enc.moe_records()
        loss = loss + sum(moe_aux_losses(records).values())
        ran = [r for r in records if r is not None]
        assert all(r.routing.expert.shape[0] == int(olens.sum()) for r in ran)  # padding never routed
        moe_layer_stats(records)
    loss.backward()
    assert len(enc.slot_names) == 2 * (2 if conf["macaron_ffn"] else 1)


@pytest.mark.parametrize("cls", E_BRANCHFORMERS)
def test_e_branchformer_invalid_options_raise_like_espnet(cls):
    """ESPnet's test_encoder_invalid_layer_type / invalid_rel_pos_combination / wrong types."""
    kw = dict(our_kwargs(cls), use_ffn=True)
    for bad in (dict(input_layer="dummy"), dict(rel_pos_type="dummy"), dict(pos_enc_layer_type="dummy"),
                dict(pos_enc_layer_type="abc_pos", attention_layer_type="dummy")):
        with pytest.raises(ValueError):
            cls(20, **kw, **bad)
    for bad in (dict(rel_pos_type="latest", pos_enc_layer_type="legacy_rel_pos", attention_layer_type="legacy_rel_sselfattn"),
                dict(pos_enc_layer_type="rel_pos", attention_layer_type="legacy_rel_sselfattn"),
                dict(attention_layer_type="fast_selfattn", pos_enc_layer_type="rel_pos")):
        with pytest.raises(AssertionError):
            cls(20, **kw, **bad)
    with pytest.raises(TypeCheckError, match="num_blocks"):  # ESPnet's @typechecked
        cls(20, **kw, num_blocks="2")
    assert cls(20, **kw, output_size=256).output_size() == 256


@pytest.mark.parametrize("cls", E_BRANCHFORMERS)
def test_e_branchformer_without_ffn_names_use_ffn(cls):
    for conf in (dict(), dict(use_ffn=False)):
        with pytest.raises(ValueError, match=r"encoder_conf\.use_ffn must be true for .*set use_ffn: true"):
            cls(20, **our_kwargs(cls), **conf)


def test_e_branchformer_macaron_key_is_macaron_ffn():
    with pytest.raises(ValueError, match=r"encoder_conf\.moe_macaron: true needs macaron_ffn: true"):
        OmniRouterEBranchformerEncoder(20, num_experts=2, **dict(SMALL_EBF, macaron_ffn=False), moe_macaron=True)
    with pytest.raises(ValueError, match=r"encoder_conf\.duo_macaron: true needs macaron_ffn: true"):
        DuoEBranchformerEncoder(20, **dict(SMALL_EBF, macaron_ffn=False), duo_macaron=True)
    enc = OmniRouterEBranchformerEncoder(20, num_experts=2, router_per_ffn_position=True, **SMALL_EBF)
    assert [k for k in enc.state_dict() if "router" in k] == ["routers.0.weight", "routers.1.weight"]


@pytest.mark.parametrize("cls", E_BRANCHFORMERS)
def test_e_branchformer_equals_dense_and_reloads_strictly(cls):
    """One expert (Duo: all big) is ESPnet's E-Branchformer; a state dict reloads strictly.
    (Full-length inputs: the cgMLP convolution sees the FFN output of padded frames, 0 here.)"""
    dense, ours = dense_twin(cls, EBranchformerEncoder, SMALL_EBF)
    x, lengths = torch.randn(2, 50, 20), torch.tensor([50, 50])
    with torch.no_grad():
        a, la, _ = dense(x, lengths)
        b, lb, _ = ours(x, lengths)
    assert torch.equal(la, lb)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    fresh = cls(20, **({} if cls is DuoEBranchformerEncoder else dict(num_experts=1)), **SMALL_EBF).eval()
    fresh.load_state_dict(ours.state_dict(), strict=True)
    if cls is DuoEBranchformerEncoder:
        apply_duo_policy(fresh, DuoDecodeConfig("big"))
    with torch.no_grad():
        assert torch.equal(fresh(x, lengths)[0], b)


def test_e_branchformer_batching_does_not_change_eval_output():
    torch.manual_seed(0)
    conf = dict(SMALL_EBF, input_layer="linear", cgmlp_conv_kernel=1, merge_conv_kernel=1)  # no conv over padding
    enc = OmniRouterEBranchformerEncoder(20, num_experts=4, **conf).eval()
    torch.nn.init.normal_(enc.routers[0].weight, std=1.0)
    short, long_ = torch.randn(1, 40, 20), torch.randn(1, 90, 20)
    batch = torch.zeros(2, 90, 20)
    batch[0, :40], batch[1] = short[0], long_[0]
    with torch.no_grad():
        alone, _, _ = enc(short, torch.tensor([40]))
        both, olens, _ = enc(batch, torch.tensor([40, 90]))
    torch.testing.assert_close(both[0, :40], alone[0], atol=1e-5, rtol=1e-5)
    assert all(r.routing.expert.shape[0] == 130 for r in enc.moe_records())


# ---------------------------------------------------------------- contextual block (streaming)


@pytest.mark.parametrize("cls, dense_cls", BLOCK_ENCODERS)
@pytest.mark.parametrize("input_layer", ["linear", "conv2d"])
def test_block_forward_backward(cls, dense_cls, input_layer):
    """ESPnet's test_Encoder_forward_backward, on our classes, with the auxiliary losses;
    each real frame is recorded once."""
    extra = dict(macaron_style=False, use_cnn_module=False) if "Conformer" in cls.__name__ else {}
    enc = cls(20, **MOE, output_size=40, input_layer=input_layer, block_size=4, hop_size=2, look_ahead=1, **extra)
    x = torch.randn(2, 10, 20, requires_grad=True)
    y, olens, _ = enc(x, torch.LongTensor([10, 8]))
    records = enc.moe_records()
    assert all(r.routing.expert.shape[0] == int(olens.sum()) for r in records)
    (y.sum() + sum(moe_aux_losses(records).values())).backward()
    assert x.grad is not None


@pytest.mark.parametrize("cls, dense_cls", BLOCK_ENCODERS)
def test_block_olens_are_those_of_espnet(cls, dense_cls):
    """ESPnet's test_Encoder_olens_is_independent_of_batch_mates (block_size 0), on our classes
    beside ESPnet's: the same output lengths in each case.  (Upstream's test expects 71 for the
    short row in the mixed batch; ESPnet 202511's dense encoder gives 72 there, a later fix.)"""
    extra = dict(macaron_style=False, use_cnn_module=False) if "Conformer" in cls.__name__ else {}
    conf = dict(output_size=4, attention_heads=2, linear_units=4, num_blocks=1, input_layer="conv2d", block_size=0, **extra)
    short, long_ = 288, 363
    feats = torch.randn(2, long_, 8)
    cases = [(feats[1:2, :short], [short]), (feats, [long_, short]), (feats[:, :short], [short, short])]
    with torch.no_grad():
        olens = [
            [enc(x, torch.tensor(lengths))[1].tolist() for x, lengths in cases]
            for enc in (cls(8, **MOE, **conf).eval(), dense_cls(8, **conf).eval())
        ]
    assert olens[0] == olens[1] and olens[0][0] == [71] and olens[0][2] == [71, 71]


def last_block_is_full(frames, block, hop):
    return frames <= block or (frames - block) % hop == 0


@pytest.mark.parametrize("cls, dense_cls", BLOCK_ENCODERS)
def test_block_one_expert_equals_dense_and_reloads_strictly(cls, dense_cls):
    """One expert is ESPnet's encoder where no block holds padding (a full last block; the
    dense encoder attends to the empty tail of a partial last block, whose FFN output is 0 here),
    in full-utterance (simulated streaming) and in chunk-by-chunk streaming mode."""
    conf = dict(BLOCK, macaron_style=True) if "Conformer" in cls.__name__ else BLOCK
    dense, ours = dense_twin(cls, dense_cls, conf)
    frames = 115  # conv2d: 28 frames, 6 blocks of 8 every 4, the last one full
    assert last_block_is_full(((frames - 3) // 2 - 2) // 2 + 1, 8, 4)
    x = torch.randn(2, frames, 20)
    lengths = torch.tensor([frames, frames])
    with torch.no_grad():
        a, la, _ = dense(x, lengths)
        b, lb, _ = ours(x, lengths)
        assert torch.equal(la, lb)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stream(ours, x[:1], 24), stream(dense, x[:1], 24), atol=1e-5, rtol=1e-5)
    fresh = cls(20, num_experts=1, **conf).eval()
    fresh.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x, lengths)[0], b)


def stream(enc, x, chunk, counts=None):
    """``enc`` fed ``x`` ``[1, T, d]`` chunk by chunk as Speech2TextStreaming feeds it; the
    outputs concatenated.  ``counts`` gets, per call, the recorded rows of each MoE FFN."""
    states, outs = None, []
    for start in range(0, x.shape[1], chunk):
        part = x[:, start : start + chunk]
        final = start + chunk >= x.shape[1]
        y, _, states = enc(part, torch.tensor([part.shape[1]]), states, is_final=final, infer_mode=True)
        outs.append(y)
        if counts is not None:
            counts.append((y.shape[1], [r.routing.expert.shape[0] for r in enc.moe_records() if r is not None]))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("cls, dense_cls", BLOCK_ENCODERS)
@pytest.mark.parametrize("frames, chunk", [(57, 24), (111, 24), (150, 24), (150, 1000)])
def test_streaming_equals_full_utterance_and_records_each_frame_once(cls, dense_cls, frames, chunk):
    """Chunk-by-chunk streaming gives the full-utterance (block-processed) output at any
    length, with 4 experts and a sharp router, and each call records exactly the frames it
    emits (padding, context slots, past and look-ahead copies are not recorded); chunk 1000:
    the whole utterance in one call, first and final at once."""
    torch.manual_seed(1)
    enc = cls(20, num_experts=4, **BLOCK).eval()
    for router in {id(m.router): m.router for m in enc.moe_ffns()}.values():
        torch.nn.init.normal_(router.weight, std=1.0)
    x = torch.randn(1, frames, 20)
    counts = []
    with torch.no_grad():
        full, olens, _ = enc(x, torch.tensor([frames]))
        assert all(r.routing.expert.shape[0] == int(olens[0]) for r in enc.moe_records())
        streamed = stream(enc, x, chunk, counts)
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=1e-5)
    assert all(all(c == emitted for c in per_ffn) for emitted, per_ffn in counts)
    assert sum(e for e, _ in counts) == full.shape[1]


def reference_routed_positions(lengths, nblock, block, hop):
    """Positions of the block batch that hold real input, by a plain loop over ESPnet's filling."""
    total = 0
    for length in lengths:
        for i in range(nblock):
            frames = [i * hop + p for p in range(block) if i * hop + p < length]
            total += len(frames) + (2 if frames else 0)  # and the two context slots
    return total


def test_padding_never_reaches_the_router_in_block_processing():
    torch.manual_seed(0)
    enc = OmniRouterContextualBlockConformerEncoder(20, num_experts=4, **dict(BLOCK, input_layer="linear")).train()
    seen = []
    enc.routers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    lengths = torch.tensor([30, 19, 9])
    y, olens, _ = enc(torch.randn(3, 30, 20), lengths)
    nblock = -(-(30 - 8) // 4) + 1
    assert seen and all(n == reference_routed_positions(lengths.tolist(), nblock, 8, 4) for n in seen)
    records = enc.moe_records()
    assert all(r.valid.shape == (3, 30) and torch.equal(r.valid.sum(1), olens) for r in records)
    assert enc._padding_hook.padding is None and enc._padding_hook.lengths is None  # nothing kept


@pytest.mark.parametrize(
    "conf, message",
    [
        (dict(block_size=None), r"encoder_conf\.block_size must be set .*with hop_size and look_ahead"),
        (dict(hop_size=None), r"encoder_conf\.hop_size must be set .* with block_size: 8"),
        (dict(look_ahead=None), r"encoder_conf\.look_ahead must be set .* with block_size: 8"),
        (dict(hop_size=7), r"hop_size \+ look_ahead <= block_size, got hop_size 7, look_ahead 2"),
        (dict(hop_size=0), r"hop_size >= 1"),
        (dict(block_size=-1), r"encoder_conf\.block_size must be >= 0"),
        (dict(block_size=-4, hop_size=None), r"encoder_conf\.block_size must be >= 0"),
        (dict(capacity_factor=1.25), r"encoder_conf\.capacity_factor must be null"),
    ],
)
def test_block_errors_name_the_key(conf, message):
    kwargs = {**BLOCK, **conf}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        OmniRouterContextualBlockConformerEncoder(20, **MOE, **kwargs)


def test_block_streaming_key_of_the_wrong_type_is_named():
    with pytest.raises(TypeError, match=r"encoder_conf\.hop_size must be an int, got str '4'"):
        SwitchContextualBlockTransformerEncoder(20, **MOE, **dict(BLOCK, hop_size="4"))


# ---------------------------------------------------------------- RoE


def test_roe_runs_on_an_e_branchformer():
    """The noisy copies rerun the blocks after the first noisy MoE FFN (and E-Branchformer's
    final norm, which it always applies): with a negligible temperature they are the clean
    output, with a large one they are not."""
    from espnet_omnirouter.inference.roe import RoEConfig, RoEEncoder

    torch.manual_seed(0)
    enc = OmniRouterEBranchformerEncoder(20, num_experts=4, **dict(SMALL_EBF, num_blocks=3)).eval()
    torch.nn.init.normal_(enc.routers[0].weight, std=1.0)
    x, ilens = torch.randn(1, 60, 20), torch.tensor([60])
    for tau, same in ((1e-6, True), (2.0, False)):
        roe = RoEEncoder(enc, RoEConfig(samples=2, tau=tau, clean_layers=1))
        with roe.capture(), torch.no_grad():
            clean, _, _ = enc(x, ilens)
        noisy = roe.noisy_outputs()
        assert roe.noisy and noisy.shape == (2, *clean.shape)
        assert torch.allclose(noisy[0], clean, atol=1e-5) is same


def test_roe_refuses_a_streaming_encoder():
    from espnet_omnirouter.inference.roe import RoEConfig, RoEEncoder

    enc = OmniRouterContextualBlockConformerEncoder(20, num_experts=4, **dict(BLOCK, num_blocks=3))
    with pytest.raises(ValueError, match=r"RoE does not support contextual-block \(streaming\) encoders"):
        RoEEncoder(enc, RoEConfig(samples=2))


def test_routing_analysis_splits_a_streaming_encoders_records_per_utterance():
    from espnet_omnirouter.analysis.record import split_routing

    torch.manual_seed(0)
    enc = OmniRouterContextualBlockConformerEncoder(20, num_experts=4, **BLOCK).eval()
    with torch.no_grad():
        _, olens, _ = enc(torch.randn(2, 120, 20), torch.tensor([120, 70]))
    per_utt = split_routing(enc.moe_records())
    assert [a.shape for a in per_utt] == [(int(n), len(enc.moe_ffns())) for n in olens]


def test_block_transformer_without_input_layer_routes_the_input_frames():
    """input_layer null: ESPnet's Transformer has no input layer (no subsampling), ours neither."""
    enc = OmniRouterContextualBlockTransformerEncoder(16, **MOE, **dict(BLOCK, input_layer=None)).eval()
    assert enc.embed is None
    with torch.no_grad():
        y, olens, _ = enc(torch.randn(2, 30, 16), torch.tensor([30, 19]))
    assert y.shape == (2, 30, 16) and all(r.routing.expert.shape[0] == 49 for r in enc.moe_records())


def test_timed_streaming_decoder_starts_a_new_utterance_after_a_failed_final_call(monkeypatch, caplog):
    """The RTF markers pair each utterance's first chunk with its own result, also after an
    utterance whose final call raised (ESPnet's loop skips a too-short utterance and goes on)."""
    import logging

    from espnet2.bin.asr_inference_streaming import Speech2TextStreaming

    from espnet_omnirouter.inference.streaming import TimedSpeech2TextStreaming

    results = iter([RuntimeError("too short"), [("A B", [], [], None)]])

    def decode(self, speech, is_final=True):
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(Speech2TextStreaming, "__call__", decode)
    s2t = object.__new__(TimedSpeech2TextStreaming)
    with caplog.at_level(logging.INFO):
        with pytest.raises(RuntimeError):
            s2t([0.0] * 10)
        assert s2t([0.0] * 10)[0][0] == "A B"
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["speech length", "speech length", "best hypo"]
