#!/usr/bin/env python3
"""Stage 9 of asr.sh: prepare a Hugging Face model folder from the packed zip.

Unpacks ``asr_model.zip`` into ``--out`` and writes a model card ``README.md``: the
architecture (encoder, experts, router sharing), the training data, the RESULTS.md tables
(verbatim) and usage: ``pip install espnet_omnirouter``, then ESPnet's own
``Speech2Text.from_pretrained`` (the installed hook registers our encoders) or our strict
``load_speech2text``.
"""
import argparse
import os
import zipfile

import yaml

# Router sharing by encoder-name prefix (every family: conformer, transformer, e_branchformer,
# contextual_block_*).
ROUTING = {
    "omni_router_": "Omni-router: all MoE FFNs share {groups} router(s)",
    "switch_": "Switch: every MoE FFN has its own router",
}


def hours(utt2num_samples: str, fs: int) -> str:
    if not os.path.exists(utt2num_samples):
        return "unknown"
    with open(utt2num_samples) as f:
        total = sum(int(line.split()[1]) for line in f if line.strip())
    return f"{total / fs / 3600:.2f} h"


def architecture(config: dict) -> list:
    enc, conf = config["encoder"], config.get("encoder_conf", {})
    lines = [
        f"- encoder: `{enc}`, {conf.get('num_blocks', '?')} blocks, d={conf.get('output_size', '?')}, "
        f"FFN {conf.get('linear_units', '?')}"
    ]
    routing = next((text for prefix, text in ROUTING.items() if enc.startswith(prefix)), None)
    macaron = conf.get("macaron_style") or (conf.get("use_ffn") and conf.get("macaron_ffn"))
    if routing is not None:
        lines += [
            f"- Mixture of Experts: {conf.get('num_experts', 8)} experts per MoE FFN, top-{conf.get('top_k', 1)} routing"
            f"{', macaron FFNs included' if conf.get('moe_macaron') is not False and macaron else ''}",
            f"- router sharing: {routing.format(groups=conf.get('router_groups') or 1)}",
            f"- capacity factor: {conf.get('capacity_factor') or 'none (dropless)'}",
        ]
    elif enc.startswith("duo_"):
        lines.append("- Duo: each FFN slot takes a big, small or skip path per frame "
                     f"(router: {conf.get('duo_router', 'slot')})")
    else:
        lines.append("- dense (no Mixture of Experts)")
    if "contextual_block" in enc:
        lines.append(f"- streaming: blocks of {conf.get('block_size', '?')} frames, hop {conf.get('hop_size', '?')}, "
                     f"look-ahead {conf.get('look_ahead', '?')} (decode with asr_inference_streaming)")
    lines.append(f"- decoder: `{config.get('decoder')}`, model `{config.get('model', 'espnet')}`, "
                 f"CTC weight {config.get('model_conf', {}).get('ctc_weight', 0.5)}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--zip", required=True)
    p.add_argument("--config", required=True, help="the experiment's config.yaml")
    p.add_argument("--results", required=True, help="RESULTS.md")
    p.add_argument("--hf_repo", required=True)
    p.add_argument("--train_set", required=True)
    p.add_argument("--utt2num_samples", required=True, help="of the training set, for its duration")
    p.add_argument("--fs", type=int, default=16000)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    with zipfile.ZipFile(args.zip) as z:
        z.extractall(args.out)
    with open(args.config) as f:
        config = yaml.safe_load(f)
    with open(args.results) as f:
        results = f.read()
    card = [
        "---",
        "tags: [espnet, audio, automatic-speech-recognition, mixture-of-experts]",
        "library_name: espnet",
        "license: apache-2.0",
        "---",
        "",
        f"# {args.hf_repo}",
        "",
        "An ESPnet ASR model with a Mixture-of-Experts encoder from "
        "[espnet_omnirouter](https://pypi.org/project/espnet_omnirouter/).",
        "",
        "## Usage",
        "",
        "```bash",
        "pip install espnet_omnirouter",
        "```",
        "",
        "The installed plugin registers its encoders in ESPnet by itself, so ESPnet's own loader works as for "
        "every ESPnet model (and so do ESPnet's recipes and `espnet2.bin.asr_inference`):",
        "",
        "```python",
        "from espnet2.bin.asr_inference import Speech2Text",
        "",
        f'speech2text = Speech2Text.from_pretrained("{args.hf_repo}")',
        "text = speech2text(waveform_16khz)[0][0]",
        "```",
        "",
        "The plugin's loader does the same and also checks that the checkpoint's parameters are exactly the "
        "model's (ESPnet loads weights with `strict=False`):",
        "",
        "```python",
        "from espnet_omnirouter.hub import load_speech2text",
        "",
        f'speech2text = load_speech2text("{args.hf_repo}")',
        "text = speech2text(waveform_16khz)[0][0]",
        "```",
        "",
        "## Architecture",
        "",
        *architecture(config),
        "",
        "## Training data",
        "",
        f"- training set: `{args.train_set}` ({hours(args.utt2num_samples, args.fs)} of audio)",
        f"- tokens: `{config.get('token_type')}`, {len(config.get('token_list', []))} units",
        "",
        "## Results",
        "",
        results.strip(),
        "",
    ]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(card))
    print(f"model folder: {args.out}")


if __name__ == "__main__":
    main()
