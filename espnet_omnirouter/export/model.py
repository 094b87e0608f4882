"""Export a whole ESPnet ASR model (ours or ESPnet's dense one) to a directory of ONNX graphs.

Layout of ``out_dir`` (``espnet_omnirouter_onnx.Speech2Text`` reads it):

* ``frontend.onnx``: speech -> normalised features (``export.frontend``);
* ``encoder.onnx``: features -> ``encoder_out`` (``export.encoder``; MoE/Duo slots sparse);
* ``ctc.onnx``, ``decoder.onnx``: the beam search's scorers (``export.decoder``; no
  ``decoder.onnx`` for a CTC-only model);
* ``config.yaml``: file names, token list, ``sos``/``eos``/``blank`` ids, tokenizer, sampling
  rate, the Duo policy the encoder was exported with, and where the model came from;
* ``bpe.model``: the SentencePiece model, for ``token_type: bpe``.

The layout follows espnet_onnx's (one graph per module, a ``config.yaml`` beside them), whose own
runtime cannot be imported beside ESPnet 202511 (it needs typeguard 2's ``check_argument_types``).
"""
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import yaml

from espnet_omnirouter.export.decoder import CTC_INPUT_NAMES, CTC_OUTPUT_NAMES, decoder_names, export_ctc
from espnet_omnirouter.export.decoder import export_decoder, unsupported_decoder
from espnet_omnirouter.export.encoder import INPUT_NAMES, OPSET, OUTPUT_NAMES, export_encoder, unsupported
from espnet_omnirouter.export.frontend import INPUT_NAMES as FRONTEND_INPUTS
from espnet_omnirouter.export.frontend import OUTPUT_NAMES as FRONTEND_OUTPUTS
from espnet_omnirouter.export.frontend import export_frontend, unsupported_frontend
from espnet_omnirouter_onnx.speech2text import CONFIG_NAME, FORMAT  # the runtime's layout, read there

TOKEN_TYPES = ("char", "word", "bpe")


def unsupported_model(asr_model: torch.nn.Module, token_type: Optional[str]) -> Optional[str]:
    """Why ``asr_model`` cannot be exported (None: it can), naming the YAML key to change."""
    from espnet2.asr.espnet_model import ESPnetASRModel

    if not isinstance(asr_model, ESPnetASRModel):
        return (f"{type(asr_model).__name__} is not an ESPnet ASR model (espnet2.asr.espnet_model."
                "ESPnetASRModel, as `asr_train` builds it)")
    if asr_model.use_transducer_decoder:
        return "decoder: a transducer (joint_network) is not exportable: use an attention decoder"
    for key in ("preencoder", "postencoder"):
        if getattr(asr_model, key) is not None:
            return f"{key}: {type(getattr(asr_model, key)).__name__} is not exportable (use {key}: null)"
    if asr_model.ctc is None:
        return "model_conf.ctc_weight: 0 leaves the model without CTC; export needs a CTC"
    if token_type not in TOKEN_TYPES:
        return f"token_type: {token_type!r} is not supported by the ONNX runtime (supported: {list(TOKEN_TYPES)})"
    why = unsupported_frontend(asr_model.frontend, asr_model.normalize) or unsupported(asr_model.encoder)
    if why is None and asr_model.decoder is not None:
        why = unsupported_decoder(asr_model.decoder)
    return why


def export_asr_model(asr_model: torch.nn.Module, train_args: Any, out_dir: str, opset: int = OPSET,
                     source: Optional[Dict[str, str]] = None, duo_policy: Optional[Dict[str, Any]] = None) -> str:
    """Export ``asr_model`` (built from ``train_args``, its ``config.yaml``) into ``out_dir``.

    Args:
        asr_model: an ESPnet ASR model in eval mode (a Duo encoder with its decoding policy set).
        train_args: the training namespace (``token_type``, ``bpemodel``, ``frontend_conf``).
        out_dir: output directory (created; files of an earlier export are replaced).
        opset: ONNX opset of every graph.
        source: where the model came from (written into ``config.yaml``).
        duo_policy: the Duo decoding options the encoder was set to (written into ``config.yaml``).

    Returns:
        the path of the written ``config.yaml``.

    Raises:
        ValueError: the model or an option cannot be exported (nothing is written).
    """
    token_type = getattr(train_args, "token_type", None)
    why = unsupported_model(asr_model, token_type)
    if why is not None:
        raise ValueError(why)
    bpemodel = getattr(train_args, "bpemodel", None)
    if token_type == "bpe" and not (bpemodel and os.path.isfile(bpemodel)):
        raise ValueError(f"bpemodel: {bpemodel!r} not found (token_type: bpe needs the SentencePiece model)")
    asr_model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder_size = asr_model.encoder.output_size()
    vocab = len(asr_model.token_list)
    export_frontend(asr_model.frontend, asr_model.normalize, str(out / "frontend.onnx"), opset)
    export_encoder(asr_model.encoder, str(out / "encoder.onnx"), asr_model.frontend.output_size(), opset)
    export_ctc(asr_model.ctc, str(out / "ctc.onnx"), encoder_size, opset)
    config: Dict[str, Any] = {
        "format": FORMAT,
        "opset": opset,
        "fs": int(getattr(asr_model.frontend.logmel, "mel_options", {}).get("sr", 16000)),
        "frontend": {"model_path": "frontend.onnx", "input_names": FRONTEND_INPUTS,
                     "output_names": FRONTEND_OUTPUTS},
        "encoder": {"model_path": "encoder.onnx", "input_names": INPUT_NAMES, "output_names": OUTPUT_NAMES,
                    "class": type(asr_model.encoder).__name__, "output_size": encoder_size},
        "ctc": {"model_path": "ctc.onnx", "input_names": CTC_INPUT_NAMES, "output_names": CTC_OUTPUT_NAMES},
        "decoder": None,
        "token": {"list": list(asr_model.token_list), "sos": int(asr_model.sos), "eos": int(asr_model.eos),
                  "blank": int(asr_model.blank_id)},
        "tokenizer": {"token_type": token_type, "bpemodel": None},
        "duo_policy": duo_policy,
        "source": source or {},
    }
    if asr_model.decoder is not None:
        export_decoder(asr_model.decoder, str(out / "decoder.onnx"), encoder_size, vocab, opset)
        inputs, outputs = decoder_names(len(asr_model.decoder.decoders))
        config["decoder"] = {"model_path": "decoder.onnx", "input_names": inputs, "output_names": outputs,
                             "n_blocks": len(asr_model.decoder.decoders),
                             "cache_size": asr_model.decoder.decoders[0].size}
    elif (out / "decoder.onnx").exists():
        (out / "decoder.onnx").unlink()
    if token_type == "bpe":
        shutil.copyfile(bpemodel, out / "bpe.model")
        config["tokenizer"]["bpemodel"] = "bpe.model"
    path = out / CONFIG_NAME
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    return str(path)
