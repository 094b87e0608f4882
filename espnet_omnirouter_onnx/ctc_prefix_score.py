"""CTC prefix scores of the beam search's hypotheses, in numpy.

The algorithm and its numbers are ESPnet's ``CTCPrefixScoreTH`` for one utterance (Watanabe et
al. 2017, Algorithm 2; vectorised over hypotheses as Seki et al. 2019), without CTC windowing
(ESPnet's default ``margin=0``), so the beam search gives ESPnet's hypotheses.
"""
from typing import Optional, Sequence, Tuple

import numpy as np

LOGZERO = np.float32(-1e10)

# State of one hypothesis: forward variables ``r`` ``[T, 2]`` (non-blank, blank ending) and the
# hypothesis' prefix score ``s`` (a scalar).
HypState = Tuple[np.ndarray, np.float32]


class CTCPrefixScorer:
    """Prefix scores of CTC log-posteriors ``logp`` ``[T, V]`` (float32) of one utterance."""

    def __init__(self, logp: np.ndarray, blank: int, eos: int):
        self.blank, self.eos = blank, eos
        self.frames, self.vocab = logp.shape
        logp = logp.astype(np.float32, copy=False)
        # x[0]: log p(token), x[1]: log p(blank) repeated over tokens; [2, T, V]
        self.x = np.stack([logp, np.repeat(logp[:, blank:blank + 1], self.vocab, axis=1)])

    def score(self, yseqs: Sequence[Sequence[int]], states: Sequence[Optional[HypState]],
              ids: Optional[np.ndarray]) -> Tuple[np.ndarray, tuple]:
        """Scores of the next token for ``n`` hypotheses of equal length.

        Args:
            yseqs: the hypotheses' token ids, ``<sos>`` first.
            states: one :data:`HypState` per hypothesis (``None`` for all at the first step).
            ids: ``[n, S]`` token ids to score per hypothesis (the pre-beam), or ``None``: all.

        Returns:
            ``(scores [n, V], batch_state)``: ``log psi - s_prev`` (``LOGZERO - s_prev`` for ids not
            scored, ``LOGZERO`` for blank); ``batch_state`` for :meth:`select_state`.
        """
        n = len(yseqs)
        out_len = len(yseqs[0]) - 1
        last = np.array([y[-1] for y in yseqs])
        rows = np.arange(n)[:, None]
        if states[0] is None:
            r_prev = np.full((self.frames, 2, n), LOGZERO, dtype=np.float32)
            r_prev[:, 1] = np.cumsum(self.x[0, :, self.blank])[:, None]
            s_prev = np.zeros((n, 1), dtype=np.float32)
        else:
            r_prev = np.stack([s[0] for s in states], axis=2)
            s_prev = np.array([s[1] for s in states], dtype=np.float32)[:, None]
        if ids is not None:
            idmap = np.full((n, self.vocab), -1, dtype=np.int64)
            idmap[rows, ids] = np.arange(ids.shape[1])
            x_ = self.x[:, :, ids]  # [2, T, n, S]
        else:
            idmap = None
            x_ = np.broadcast_to(self.x[:, :, None, :], (2, self.frames, n, self.vocab))
        snum = x_.shape[-1]
        r = np.full((self.frames, 2, n, snum), LOGZERO, dtype=np.float32)
        if out_len == 0:
            r[0, 0] = x_[0, 0]
        r_sum = np.logaddexp(r_prev[:, 0], r_prev[:, 1])  # [T, n]
        log_phi = np.repeat(r_sum[:, :, None], snum, axis=2)
        pos = last if idmap is None else idmap[np.arange(n), last]
        for h in np.flatnonzero(pos >= 0):
            log_phi[:, h, pos[h]] = r_prev[:, 1, h]
        start = max(out_len, 1)
        for t in range(start, self.frames):
            r[t, 0] = np.logaddexp(r[t - 1, 0], log_phi[t - 1]) + x_[0, t]
            r[t, 1] = np.logaddexp(r[t - 1, 0], r[t - 1, 1]) + x_[1, t]
        log_phi_x = np.concatenate([log_phi[:1], log_phi[:-1]], axis=0) + x_[0]
        terms = np.concatenate([log_phi_x[start:], r[start - 1, 0][None]], axis=0)
        psi = _logsumexp0(terms)  # [n, S]
        if idmap is None:
            log_psi = psi
        else:
            log_psi = np.full((n, self.vocab), LOGZERO, dtype=np.float32)
            log_psi[rows, ids] = psi
        log_psi[:, self.eos] = r_sum[self.frames - 1]
        if self.eos != self.blank:
            log_psi[:, self.blank] = LOGZERO
        return log_psi - s_prev, (r, log_psi, idmap)

    @staticmethod
    def select_state(batch_state: tuple, hyp: int, token: int) -> HypState:
        """The state of hypothesis ``hyp`` extended by ``token``."""
        r, log_psi, idmap = batch_state
        column = token if idmap is None else idmap[hyp, token]
        return r[:, :, hyp, column], log_psi[hyp, token]


def _logsumexp0(a: np.ndarray) -> np.ndarray:
    """``logsumexp`` over axis 0, as torch computes it (max-shifted)."""
    m = a.max(axis=0)
    return np.log(np.exp(a - m).sum(axis=0)) + m
