"""``Speech2Text`` over an exported model directory: onnxruntime and numpy, no PyTorch, no ESPnet.

    >>> from espnet_omnirouter_onnx import Speech2Text
    >>> speech2text = Speech2Text("exp/asr_omni/onnx", beam_size=5, ctc_weight=0.3)
    >>> text, tokens, token_ids, hyp = speech2text(waveform)[0]

Its options and results are those of ESPnet's ``espnet2.bin.asr_inference.Speech2Text`` (and of
espnet_onnx's): ``__call__`` takes one utterance, a 1-D float array of samples at the model's
``fs`` (``fs`` of ``config.yaml``), and returns the n-best list of ``(text, tokens, token_ids,
hypothesis)``.  ``greedy_ctc`` gives the CTC best path.
"""
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort
import yaml

from espnet_omnirouter_onnx.beam_search import BeamSearch, Hypothesis
from espnet_omnirouter_onnx.tokens import Tokenizer

FORMAT = "espnet_omnirouter_onnx/1"  # config.yaml's ``format``, written by espnet_omnirouter.export.model
CONFIG_NAME = "config.yaml"
Result = Tuple[str, List[str], List[int], Hypothesis]


class Speech2Text:
    """Decode speech with the ONNX graphs that ``espnet_omnirouter.bin.export_onnx`` wrote.

    Args:
        model_dir: the export directory (with ``config.yaml``).
        beam_size, ctc_weight, penalty, maxlenratio, minlenratio, nbest: as ESPnet's
            ``Speech2Text`` (same defaults).
        providers: onnxruntime execution providers.
        threads: onnxruntime intra-op threads per graph (None: onnxruntime's default).
    """

    def __init__(self, model_dir: str, beam_size: int = 20, ctc_weight: float = 0.5, penalty: float = 0.0,
                 maxlenratio: float = 0.0, minlenratio: float = 0.0, nbest: int = 1,
                 providers: Sequence[str] = ("CPUExecutionProvider",), threads: Optional[int] = None):
        path = os.path.join(model_dir, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{model_dir}: no config.yaml (make one with python -m "
                                    "espnet_omnirouter.bin.export_onnx --model ... --out DIR)")
        with open(path, encoding="utf-8") as f:
            self.config = yaml.safe_load(f)
        if not isinstance(self.config, dict) or self.config.get("format") != FORMAT:
            raise ValueError(f"{path}: format must be {FORMAT!r} (written by espnet_omnirouter.bin.export_onnx), "
                             f"got {self.config.get('format') if isinstance(self.config, dict) else self.config!r}")
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads

        def session(key: str) -> ort.InferenceSession:
            return ort.InferenceSession(os.path.join(model_dir, self.config[key]["model_path"]), options,
                                        providers=list(providers))

        self.frontend, self.encoder, self.ctc = session("frontend"), session("encoder"), session("ctc")
        self.decoder = session("decoder") if self.config.get("decoder") else None
        token = self.config["token"]
        self.token_list: List[str] = token["list"]
        self.tokenizer = Tokenizer(self.config["tokenizer"]["token_type"], model_dir,
                                   self.config["tokenizer"].get("bpemodel"))
        self.fs = int(self.config["fs"])
        self.beam_search = BeamSearch(beam_size, ctc_weight, penalty, len(self.token_list), token["sos"],
                                      token["eos"], token["blank"], self.decoder is not None)
        self.maxlenratio, self.minlenratio, self.nbest = maxlenratio, minlenratio, nbest

    def encode(self, speech: np.ndarray) -> np.ndarray:
        """``encoder_out`` ``[T', d]`` of one utterance ``speech`` ``[S]``."""
        speech = np.asarray(speech, dtype=np.float32)
        if speech.ndim != 1:
            raise ValueError(f"speech must be one utterance, a 1-D array of samples; got shape {speech.shape}")
        lengths = np.array([speech.shape[0]], dtype=np.int64)
        feats, feats_length = self.frontend.run(None, {"speech": speech[None], "speech_lengths": lengths})
        out, _ = self.encoder.run(None, {"feats": feats, "feats_length": feats_length})
        return out[0]

    def ctc_logp(self, encoder_out: np.ndarray) -> np.ndarray:
        """CTC log-posteriors ``[T', V]``."""
        return self.ctc.run(None, {"encoder_out": encoder_out[None]})[0][0]

    def greedy_ctc(self, speech: np.ndarray) -> List[int]:
        """The CTC best path of ``speech``: token ids, repeats merged, blanks removed."""
        best = self.ctc_logp(self.encode(speech)).argmax(-1)
        merged = best[np.r_[True, best[1:] != best[:-1]]]
        return [int(t) for t in merged if t != self.config["token"]["blank"]]

    def __call__(self, speech: np.ndarray) -> List[Result]:
        encoder_out = self.encode(speech)
        memory = encoder_out[None]
        dec = self.config.get("decoder") or {}
        names = dec.get("input_names", [])

        def decoder_step(ys: np.ndarray, caches: List[np.ndarray]):
            feed = {"ys": ys, "memory": np.ascontiguousarray(np.broadcast_to(memory, (len(ys),) + memory.shape[1:]))}
            feed.update(zip(names[2:], caches))
            logp, *new_caches = self.decoder.run(None, feed)
            return logp, new_caches

        hyps = self.beam_search(self.ctc_logp(encoder_out), decoder_step if self.decoder else None,
                                dec.get("n_blocks", 0), dec.get("cache_size", 0), self.maxlenratio, self.minlenratio)
        results = []
        for hyp in hyps[: self.nbest]:
            token_ids = [t for t in hyp.yseq[1:-1] if t != 0]  # as ESPnet's Speech2Text: id 0 dropped
            tokens = [self.token_list[t] for t in token_ids]
            results.append((self.tokenizer.tokens2text(tokens), tokens, token_ids, hyp))
        return results
