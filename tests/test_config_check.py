"""Typed, named checks of every key we add: encoder_conf (MoE keys), model_conf (moe_espnet),
the roe_* options; unknown keys with the closest match."""
import inspect
import os
import sys

import pytest
from espnet2.tasks.asr import ASRTask

import espnet_omnirouter  # noqa: F401
from espnet_omnirouter.asr_model import MoEASRModel
from espnet_omnirouter.encoders import (
    MoEEncoderMixin,
    OmniRouterConformerEncoder,
    OmniRouterTransformerEncoder,
    SwitchConformerEncoder,
    SwitchTransformerEncoder,
)
from espnet_omnirouter.inference import RoEConfig

from test_encoders import CONFORMER, SMALL, build_args
from tiny_asr_data import ROOT

ENCODERS = [SwitchConformerEncoder, OmniRouterConformerEncoder, SwitchTransformerEncoder, OmniRouterTransformerEncoder]

# Every MoE key of encoder_conf with values of a wrong type (YAML gives these as they are:
# "4" is a quoted number, 1e-2 is a string in YAML 1.1, true/false are not numbers).
WRONG_MOE = {
    "num_experts": ["4", 4.0, True, None, [4]],
    "moe_layers": [1, "0,1", [0.0], [True], {0: 1}],
    "top_k": ["1", 1.0, False, None],
    "router_jitter": ["0.1", "1e-2", True, None, [0.1]],
    "capacity_factor": ["1.25", True, [1.25]],
    "moe_macaron": ["yes", 1, 0.0],
    "router_groups": ["1", 1.0, True],
    "router_per_ffn_position": ["yes", 1, 0.0],
}
# ... and values of the right type that an ESPnet user writes (an int where a float belongs).
RIGHT_MOE = {
    "num_experts": 2,
    "moe_layers": [0, 2],
    "top_k": 2,
    "router_jitter": 0,
    "capacity_factor": 2,
    "moe_macaron": False,
    "router_groups": 3,
    "router_per_ffn_position": True,
}


def takes(cls, key):
    return key in inspect.signature(cls).parameters


def conf_for(cls):
    return dict(CONFORMER if "Conformer" in cls.__name__ else SMALL, num_experts=4)


def test_every_moe_key_is_covered():
    mixin = set(inspect.signature(MoEEncoderMixin.__init__).parameters) - {"self", "input_size", "encoder_kwargs"}
    assert mixin == set(WRONG_MOE) == set(RIGHT_MOE)
    published = set().union(*(inspect.signature(c).parameters for c in ENCODERS))
    assert mixin <= published


# (router_groups is only omni_router_*'s, moe_macaron only *_conformer's: tests below)
TAKEN = [(cls, key) for cls in ENCODERS for key in sorted(WRONG_MOE) if takes(cls, key)]


@pytest.mark.parametrize("cls, key", TAKEN, ids=[f"{c.__name__}-{k}" for c, k in TAKEN])
def test_wrong_type_names_the_key(cls, key):
    for value in WRONG_MOE[key]:
        with pytest.raises(TypeError, match=rf"^encoder_conf\.{key} must be .*, got {type(value).__name__} "):
            cls(20, **dict(conf_for(cls), **{key: value}))


@pytest.mark.parametrize("cls", ENCODERS, ids=lambda c: c.__name__)
def test_right_types_are_accepted(cls):
    for key, value in RIGHT_MOE.items():
        if takes(cls, key):
            enc = cls(20, **dict(conf_for(cls), **{key: value}))
            assert len(enc.moe_ffns()) >= 1


def test_quoted_and_exponent_numbers_say_why():
    with pytest.raises(TypeError, match=r"remove the quotes"):
        OmniRouterConformerEncoder(20, **dict(CONFORMER, num_experts="4"))
    with pytest.raises(TypeError, match=r"YAML reads 1e-2 as a string: write it with a dot, e.g. 1.0e-2"):
        OmniRouterConformerEncoder(20, **dict(CONFORMER, router_jitter="1e-2"))


@pytest.mark.parametrize("cls", ENCODERS, ids=lambda c: c.__name__)
def test_misspelt_key_suggests_the_meant_one(cls):
    kwargs = dict(conf_for(cls))
    kwargs["num_expert"] = kwargs.pop("num_experts")
    with pytest.raises(TypeError) as e:
        cls(20, **kwargs)
    message = str(e.value)
    assert f"{cls.__name__} has no key encoder_conf.num_expert (did you mean 'num_experts'?)" in message
    assert "ConformerEncoder.__init__" not in message and "unexpected keyword" not in message
    valid = message.split("valid keys of encoder_conf: ")[1].split(", ")
    assert valid == [n for n in inspect.signature(cls).parameters if n != "input_size"]
    assert ("cnn_module_kernel" in valid) == ("Conformer" in cls.__name__)


def test_misspelt_espnet_key_and_unknown_key_are_both_named():
    with pytest.raises(TypeError, match=r"encoder_conf\.linear_unit \(did you mean 'linear_units'\?\), encoder_conf\.zzz;"):
        SwitchTransformerEncoder(20, **dict(SMALL, linear_unit=64, zzz=1))


@pytest.mark.parametrize("cls", [SwitchTransformerEncoder, OmniRouterTransformerEncoder], ids=lambda c: c.__name__)
@pytest.mark.parametrize("value", [True, False])
def test_moe_macaron_on_a_transformer_is_rejected(cls, value):
    with pytest.raises(ValueError, match=r"encoder_conf\.moe_macaron is for encoders with a macaron FFN \(\*_conformer, \*_e_branchformer\): .* no macaron FFN"):
        cls(20, **dict(SMALL, num_experts=4, moe_macaron=value))


def test_moe_macaron_true_needs_macaron_style():
    with pytest.raises(ValueError, match=r"encoder_conf\.moe_macaron: true needs macaron_style: true"):
        SwitchConformerEncoder(20, **dict(CONFORMER, num_experts=4, macaron_style=False, moe_macaron=True))
    # the default converts the macaron FFN when there is one
    assert len(SwitchConformerEncoder(20, **dict(CONFORMER, num_experts=4, macaron_style=False)).moe_ffns()) == 3
    assert len(SwitchConformerEncoder(20, **dict(CONFORMER, num_experts=4)).moe_ffns()) == 6


def test_print_config_lists_the_keys_with_their_defaults(monkeypatch):
    """What ``asr_train --print_config`` prints (ESPnet's get_default_config reads sys.argv)."""
    monkeypatch.setattr(sys, "argv", ["asr_train", "--encoder", "omni_router_conformer", "--model", "moe_espnet"])
    conf = ASRTask.get_default_config()
    assert list(conf["encoder_conf"])[:8] == list(WRONG_MOE)
    assert conf["encoder_conf"]["moe_macaron"] is None and conf["encoder_conf"]["router_groups"] == 1
    assert conf["encoder_conf"]["cnn_module_kernel"] == 31
    assert conf["model_conf"]["moe_aux_weight"] == 0.01 and "ctc_weight" in conf["model_conf"]


# ---------------------------------------------------------------------------------------------
# model_conf of moe_espnet

MODEL_KEYS = ["moe_aux_weight", "moe_zloss_weight", "duo_budget_weight"]
# (duo_budget and duo_freeze_backbone: tests/test_duo.py::test_model_errors_name_the_key)
DUO_MODEL_KEYS = ["duo_budget", "duo_freeze_backbone"]


def test_every_model_key_is_covered():
    own = set(inspect.signature(MoEASRModel.__init__).parameters) - {"self", "args", "kwargs"}
    assert own == set(MODEL_KEYS) | set(DUO_MODEL_KEYS)


@pytest.mark.parametrize("key", MODEL_KEYS)
@pytest.mark.parametrize("value", ["0.01", "1e-2", True, None, [0.01]])
def test_model_key_wrong_type_names_it(key, value):
    with pytest.raises(TypeError, match=rf"^model_conf\.{key} must be a number, got {type(value).__name__} "):
        MoEASRModel(**{key: value})


CONFIG = os.path.join(ROOT, "conf", "tiny", "train_asr_omni_router_conformer.yaml")


def test_model_conf_from_yaml(tmp_path):
    args = build_args(CONFIG, tmp_path)
    args.model_conf.update(moe_aux_weight=0, moe_zloss_weight=1)  # ints where floats belong
    model = ASRTask.build_model(args)
    assert (model.moe_aux_weight, model.moe_zloss_weight) == (0, 1)
    args.model_conf["ctc_wieght"] = 0.3
    with pytest.raises(TypeError, match=r"MoEASRModel has no key model_conf\.ctc_wieght \(did you mean 'ctc_weight'\?\)"):
        ASRTask.build_model(args)


def test_encoder_conf_typo_from_yaml(tmp_path):
    args = build_args(CONFIG, tmp_path)
    args.encoder_conf["num_expert"] = args.encoder_conf.pop("num_experts")
    with pytest.raises(TypeError, match=r"encoder_conf\.num_expert \(did you mean 'num_experts'\?\)"):
        ASRTask.build_model(args)


# ---------------------------------------------------------------------------------------------
# roe_* options (RoEConfig: Speech2Text keyword arguments and decode-config keys)

WRONG_ROE = {
    "samples": ["2", 2.0, True, None],
    "tau": ["0.5", True, [0.5, "1"], [True], None],
    "clean_layers": ["1", 1.0, False],
    "aggregate": [1, None, True],
    "shared_noise": ["true", 1, None],
    "seed": ["0", 0.0, True],
}
OUT_OF_RANGE_ROE = {
    "samples": [0, -2],
    "tau": [-0.5, [0.5, -1.0], float("inf"), float("nan"), []],
    "clean_layers": [-1],
    "aggregate": ["max", ""],
}


def test_every_roe_option_is_covered():
    assert set(WRONG_ROE) == {f.name for f in RoEConfig.__dataclass_fields__.values()}


@pytest.mark.parametrize("field", sorted(WRONG_ROE))
def test_roe_wrong_type_names_the_option(field):
    for value in WRONG_ROE[field]:
        with pytest.raises(TypeError, match=rf"^roe_{field} must be .*, got {type(value).__name__} "):
            RoEConfig(**{field: value})


@pytest.mark.parametrize("field", sorted(OUT_OF_RANGE_ROE))
def test_roe_out_of_range_names_the_option(field):
    for value in OUT_OF_RANGE_ROE[field]:
        with pytest.raises(ValueError, match=rf"^roe_{field} must be "):
            RoEConfig(**{field: value})


def test_roe_right_values_are_accepted():
    assert RoEConfig(samples=3, tau=0, clean_layers=0, aggregate="logprob", shared_noise=True, seed=-1).tau == 0
    assert RoEConfig(tau=[0, 0.5, 1]).taus(3) == [0.0, 0.5, 0.0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--roe_samples", "0"], "roe_samples must be >= 1 (1 = RoE off), got 0"),
        (["--roe_tau", "-1"], "roe_tau must be finite and >= 0"),
        (["--roe_tau", "0,-0.5,1"], "roe_tau must be finite and >= 0"),
        (["--roe_clean_layers", "-1"], "roe_clean_layers must be >= 0"),
        (["--roe_aggregate", "max"], "argument --roe_aggregate: invalid choice"),
        (["--config", "BAD_YAML"], "roe_samples must be an int, got bool True"),
    ],
)
def test_asr_inference_rejects_bad_roe_options_before_loading(args, message, tmp_path, capsys):
    """The CLI checks them (and those of a decode config, which argparse leaves unchecked)
    at once: an argparse error naming the option, exit status 2, before any model loads
    (the model files given do not exist)."""
    from espnet_omnirouter.bin import asr_inference

    bad = tmp_path / "decode.yaml"
    bad.write_text("roe_samples: true\n")
    args = [str(bad) if a == "BAD_YAML" else a for a in args]
    cmd = ["--output_dir", str(tmp_path / "out"), "--data_path_and_name_and_type", "x,speech,sound",
           "--asr_train_config", str(tmp_path / "missing.yaml"), "--asr_model_file", str(tmp_path / "missing.pth"),
           *args]
    with pytest.raises(SystemExit) as e:
        asr_inference.main(cmd)
    assert e.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
