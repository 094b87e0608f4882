"""Joint CTC/attention beam search over onnxruntime scorers, in numpy.

It follows ESPnet's ``BatchBeamSearch`` step for step, so with the same options it returns
ESPnet's hypotheses: full scorers (attention decoder, weight ``1 - ctc_weight``; length bonus,
weight ``penalty``) score every token (a CTC-only model has no decoder scorer, as in ESPnet); the CTC prefix scorer (weight ``ctc_weight``) scores the
``int(1.5 * beam_size)`` best tokens of the full scorers' weighted sum (ESPnet's pre-beam);
``maxlenratio: 0`` ends by ESPnet's ``end_detect``; the last step appends ``<eos>``.  Scorers with
weight 0 are left out, as in ESPnet.  One divergence: with no full scorer (``ctc_weight: 1``),
ESPnet picks its pre-beam from all-zero scores (an arbitrary set); here CTC scores every token.
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from espnet_omnirouter_onnx.ctc_prefix_score import CTCPrefixScorer

PRE_BEAM_RATIO = 1.5
END_DETECT_M, END_DETECT_D = 3, np.log(np.exp(-10))  # ESPnet's end_detect defaults

# decoder(ys [n, L] int64, caches per block [n, L - 1, d]) -> (logp [n, V], new caches [n, L, d])
DecoderStep = Callable[[np.ndarray, List[np.ndarray]], Tuple[np.ndarray, List[np.ndarray]]]


class Hypothesis(NamedTuple):
    """A hypothesis: ``yseq`` (``<sos>`` first), total ``score`` and per-scorer ``scores``."""

    yseq: Tuple[int, ...]
    score: float
    scores: Dict[str, float]


class _Running(NamedTuple):
    hyps: List[Hypothesis]
    ctc_states: List[Optional[tuple]]
    caches: List[np.ndarray]  # per decoder block [n, L - 1, d]


def end_detect(ended: Sequence[Hypothesis], i: int) -> bool:
    """ESPnet's ``end_detect``: the best ended hypotheses of the last M lengths are all far
    (``D_end``) below the best one."""
    if not ended:
        return False
    best = max(h.score for h in ended)
    count = 0
    for m in range(END_DETECT_M):
        same = [h.score for h in ended if len(h.yseq) == i - m]
        if same and max(same) - best < END_DETECT_D:
            count += 1
    return count == END_DETECT_M


class BeamSearch:
    """``BeamSearch(...)(ctc_logp, decoder_step, n_blocks, cache_size)`` -> n-best list.

    Args:
        beam_size, ctc_weight, penalty: ESPnet's ``Speech2Text`` options of the same names.
        vocab_size: V; sos, eos, blank: token ids.
    """

    def __init__(self, beam_size: int, ctc_weight: float, penalty: float, vocab_size: int,
                 sos: int, eos: int, blank: int, has_decoder: bool):
        self.beam_size, self.vocab = beam_size, vocab_size
        self.sos, self.eos, self.blank = sos, eos, blank
        weights = {"decoder": 1.0 - ctc_weight if has_decoder else 0.0, "ctc": ctc_weight,
                   "length_bonus": penalty}
        self.weights = {k: w for k, w in weights.items() if w != 0}
        self.full = [k for k in ("decoder", "length_bonus") if k in self.weights]
        self.pre_beam = int(PRE_BEAM_RATIO * beam_size)
        self.do_pre_beam = "ctc" in self.weights and self.pre_beam < vocab_size and bool(self.full)

    def __call__(self, ctc_logp: np.ndarray, decoder_step: Optional[DecoderStep], n_blocks: int,
                 cache_size: int, maxlenratio: float = 0.0, minlenratio: float = 0.0) -> List[Hypothesis]:
        """Decode one utterance: ``ctc_logp`` ``[T, V]``; ``decoder_step`` runs the decoder on
        the running hypotheses (``None`` for a CTC-only model)."""
        frames = ctc_logp.shape[0]
        if maxlenratio == 0:
            maxlen = frames
        elif maxlenratio < 0:
            maxlen = -int(maxlenratio)
        else:
            maxlen = max(1, int(maxlenratio * frames))
        minlen = -int(minlenratio) if minlenratio < 0 else int(minlenratio * frames)
        ctc = CTCPrefixScorer(ctc_logp, self.blank, self.eos) if "ctc" in self.weights else None
        running = _Running([Hypothesis((self.sos,), 0.0, {k: 0.0 for k in self.weights})], [None],
                           [np.zeros((1, 0, cache_size), np.float32) for _ in range(n_blocks)])
        ended: List[Hypothesis] = []
        for i in range(maxlen):
            running = self._step(running, ctc, decoder_step)
            running = self._post_process(i, maxlen, minlen, running, ended)
            if maxlenratio == 0.0 and end_detect(ended, i):
                break
            if not running.hyps:
                break
        nbest = sorted(ended, key=lambda h: h.score, reverse=True)
        if not nbest and minlenratio >= 0.1:
            return self(ctc_logp, decoder_step, n_blocks, cache_size, maxlenratio, max(0.0, minlenratio - 0.1))
        return nbest

    def _step(self, running: _Running, ctc: Optional[CTCPrefixScorer],
              decoder_step: Optional[DecoderStep]) -> _Running:
        hyps = running.hyps
        n = len(hyps)
        scores: Dict[str, np.ndarray] = {}
        new_caches = running.caches
        if "decoder" in self.weights:
            ys = np.array([h.yseq for h in hyps], dtype=np.int64)
            scores["decoder"], new_caches = decoder_step(ys, running.caches)
        if "length_bonus" in self.weights:
            scores["length_bonus"] = np.ones((n, self.vocab), np.float32)
        weighted = np.zeros((n, self.vocab), np.float32)
        for k in self.full:
            weighted += np.float32(self.weights[k]) * scores[k]
        ctc_state = None
        if ctc is not None:
            ids = _topk_rows(weighted, self.pre_beam) if self.do_pre_beam else None
            scores["ctc"], ctc_state = ctc.score([h.yseq for h in hyps], running.ctc_states, ids)
            weighted += np.float32(self.weights["ctc"]) * scores["ctc"]
        weighted += np.array([h.score for h in hyps], np.float32)[:, None]
        flat = _topk_flat(weighted, self.beam_size)
        prev, tokens = flat // self.vocab, flat % self.vocab
        best, ctc_states = [], []
        for p, t in zip(prev.tolist(), tokens.tolist()):
            h = hyps[p]
            best.append(Hypothesis(h.yseq + (t,), float(weighted[p, t]),
                                   {k: h.scores[k] + float(scores[k][p, t]) for k in self.weights}))
            ctc_states.append(None if ctc is None else CTCPrefixScorer.select_state(ctc_state, p, t))
        return _Running(best, ctc_states, [c[prev] for c in new_caches])

    def _post_process(self, i: int, maxlen: int, minlen: int, running: _Running,
                      ended: List[Hypothesis]) -> _Running:
        hyps = running.hyps
        if i == maxlen - 1:
            hyps = [h._replace(yseq=h.yseq + (self.eos,)) for h in hyps]
        keep = []
        for j, h in enumerate(hyps):
            if h.yseq[-1] == self.eos:
                if i >= minlen:
                    ended.append(h)
            else:
                keep.append(j)
        index = np.array(keep, dtype=np.int64)
        return _Running([hyps[j] for j in keep], [running.ctc_states[j] for j in keep],
                        [c[index] for c in running.caches])


def _topk_flat(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of ``scores`` (flattened), largest first."""
    flat = scores.reshape(-1)
    k = min(k, flat.size)
    part = np.argpartition(-flat, k - 1)[:k]
    return part[np.argsort(-flat[part], kind="stable")]


def _topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]`` indices of each row's ``k`` largest entries, largest first."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
