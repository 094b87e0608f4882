"""ESPnet's ``asr_inference_streaming`` with the plugin registered and the config checked.

Every option of ``espnet2.bin.asr_inference_streaming`` works unchanged (``--sim_chunk_length``
feeds the audio in chunks of that many samples, as a live stream).  Before the model loads,
the training config must be a streaming one (a contextual-block encoder with ``block_size``,
``hop_size`` and ``look_ahead``), and RoE/Duo options are refused: RoE reruns the encoder on
copies of a whole utterance, and no Duo encoder streams.  Each error names the key or option;
nothing is written.
"""
import sys

import espnet_omnirouter  # noqa: F401  (registers the encoders and model)
from espnet2.bin import asr_inference_streaming
from espnet.utils.cli_utils import get_commandline_args

from espnet_omnirouter.inference.streaming import TimedSpeech2TextStreaming, check_streaming_config


def main(cmd=None):
    print(get_commandline_args(), file=sys.stderr)
    parser = asr_inference_streaming.get_parser()
    args, unknown = parser.parse_known_args(cmd)
    for option in unknown:
        if option.startswith(("--roe_", "--duo_")):
            parser.error(
                f"{option.split('=')[0]} is not available in streaming decoding: RoE reruns the encoder on "
                "copies of a whole utterance and Duo encoders do not stream (decode with asr_inference)"
            )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        check_streaming_config(args.asr_train_config)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    kwargs = vars(args)
    kwargs.pop("config", None)
    original = asr_inference_streaming.Speech2TextStreaming
    asr_inference_streaming.Speech2TextStreaming = TimedSpeech2TextStreaming
    try:
        asr_inference_streaming.inference(**kwargs)
    finally:
        asr_inference_streaming.Speech2TextStreaming = original


if __name__ == "__main__":
    main()
