"""Routing metrics on integer expert choices (numpy only).

Conventions:
  * ``x`` is an ``[N, L]`` int array: frame ``n``'s first-choice expert in MoE layer ``l``;
    ``utts`` is a list of per-utterance ``[T_u, L]`` arrays of the same kind.
  * Entropies are in nats (``0 log 0 = 0``), except the Jensen-Shannon divergence, which is
    in bits so that it lies in ``[0, 1]``.
  * Every function returns finite numbers.  Where a quantity is 0/0 it is defined as
    follows (and stated in each docstring): a layer that uses one expert only carries no
    information, so its Cramer's V and NMI with any layer (itself included) are 0; a
    normalised entropy with ``E = 1`` is 0; a switch rate without consecutive frame pairs
    is 0; a mean over an empty set of layer pairs is None (JSON null, "not applicable").
"""
from typing import Dict, List, Optional, Sequence

import numpy as np


# ----------------------------------------------------------------------------- usage
def usage_fractions(x: np.ndarray, num_experts: int) -> np.ndarray:
    """``[L, E]``: fraction of frames whose first choice in layer ``l`` is expert ``e``.

    Rows sum to 1 (all-zero rows when there are no frames).
    """
    x = np.asarray(x)
    n, num_layers = x.shape
    if n and (x.min() < 0 or x.max() >= num_experts):
        raise ValueError(f"expert indices must lie in [0, {num_experts}), got [{x.min()}, {x.max()}]")
    counts = np.zeros((num_layers, num_experts))
    for l in range(num_layers):
        counts[l] = np.bincount(x[:, l], minlength=num_experts)
    return counts / max(n, 1)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of distributions along ``axis`` (``0 log 0 = 0``)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=axis)


def usage_summary(x: np.ndarray, num_experts: int) -> Dict:
    """Per-layer expert usage.

    Returns:
        ``fractions`` ``[L][E]``; per layer ``entropy`` (nats), ``normalised_entropy``
        (``H / log E`` in ``[0, 1]``: 1 = perfectly even use; 0 when ``E = 1``),
        ``perplexity`` (``exp H``, the effective number of experts), ``max_fraction``,
        ``unused_experts`` (indices with no frame) and ``num_unused``.
    """
    frac = usage_fractions(x, num_experts)
    ent = entropy(frac, axis=1)
    norm = ent / np.log(num_experts) if num_experts > 1 else np.zeros_like(ent)
    unused = [np.flatnonzero(row == 0).tolist() for row in frac]
    return {
        "num_frames": int(np.asarray(x).shape[0]),
        "num_experts": int(num_experts),
        "fractions": frac.tolist(),
        "entropy": ent.tolist(),
        "normalised_entropy": np.clip(norm, 0.0, 1.0).tolist(),
        "perplexity": np.exp(ent).tolist(),
        "max_fraction": (frac.max(axis=1) if frac.size else np.zeros(len(frac))).tolist(),
        "unused_experts": unused,
        "num_unused": [len(u) for u in unused],
    }


# ----------------------------------------------------------------------------- dependence
def _dense(a: np.ndarray):
    """Labels renumbered ``0..k-1`` in sorted order of the values that occur, and ``k``."""
    values, inverse = np.unique(np.asarray(a).ravel(), return_inverse=True)
    return inverse.ravel(), len(values)


def _table(a_dense: np.ndarray, ka: int, b_dense: np.ndarray, kb: int) -> np.ndarray:
    return np.bincount(a_dense * kb + b_dense, minlength=ka * kb).reshape(ka, kb).astype(np.float64)


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Joint counts of two label sequences, restricted to the labels that occur.

    Rows are the distinct values of ``a``, columns those of ``b``; both sorted.  Dropping
    unused labels makes every statistic below independent of how many experts exist but
    were never chosen.
    """
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label sequences differ in length: {a.shape} vs {b.shape}")
    return _table(*_dense(a), *_dense(b))


def cramers_v_from_table(table: np.ndarray) -> float:
    """Cramer's V of a contingency table without empty rows or columns (see :func:`cramers_v`)."""
    n = table.sum()
    k = min(table.shape) if table.size else 0
    if n == 0 or k < 2:
        return 0.0
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    # chi2 = n * (sum_ij O_ij^2 / (R_i C_j) - 1): no expected-count matrix needed.
    phi2 = (table**2 / np.outer(rows, cols)).sum() - 1.0
    return float(np.sqrt(np.clip(phi2 / (k - 1), 0.0, 1.0)))


def nmi_from_table(table: np.ndarray) -> float:
    """NMI of a contingency table without empty rows or columns (see :func:`nmi`)."""
    n = table.sum()
    if n == 0 or min(table.shape) < 2:
        return 0.0
    p = table / n
    ha, hb = entropy(p.sum(axis=1)), entropy(p.sum(axis=0))
    mi = ha + hb - entropy(p.ravel())
    return float(np.clip(mi / np.sqrt(ha * hb), 0.0, 1.0))


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramer's V between two label sequences: ``sqrt(chi2 / (n (min(r, c) - 1)))``.

    ``chi2`` is Pearson's statistic of the ``r x c`` contingency table of the labels that
    occur; V is 1 when one sequence is a function of the other with ``r = c`` (for example
    a relabelled copy), near 0 under independence, and invariant to relabelling either
    sequence.  Defined as 0 when either sequence uses a single label (``min(r, c) = 1``) or
    there are no frames.  No bias correction: see :func:`cramers_v_chance`.
    """
    return cramers_v_from_table(contingency(a, b))


def cramers_v_chance(r: int, c: int, n: int) -> float:
    """Cramer's V expected from ``n`` independent frames: ``sqrt((r-1)(c-1) / (n (min(r,c)-1)))``.

    Under independence ``E[chi2] = (r-1)(c-1)``, so an observed V near this value is no
    evidence of dependence.  Consecutive frames are correlated, so the effective ``n`` of
    routed speech is smaller and its real chance level somewhat higher.  0 when undefined.
    """
    k = min(r, c)
    if n <= 0 or k < 2:
        return 0.0
    return float(min(1.0, np.sqrt((r - 1) * (c - 1) / (n * (k - 1)))))


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information in nats (>= 0)."""
    table = contingency(a, b)
    n = table.sum()
    if n == 0:
        return 0.0
    p = table / n
    mi = entropy(p.sum(axis=1)) + entropy(p.sum(axis=0)) - entropy(p.ravel())
    return float(max(mi, 0.0))


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information ``I(a; b) / sqrt(H(a) H(b))`` (geometric-mean normalisation).

    1 exactly when each sequence determines the other (e.g. a relabelled copy), near 0
    under independence, invariant to relabelling.  Defined as 0 when either sequence uses a
    single label (``H = 0``: it shares no information with anything).
    """
    return nmi_from_table(contingency(a, b))


def nmi_chance(r: int, c: int, n: int, ha: float, hb: float) -> float:
    """NMI expected from ``n`` independent frames: the plug-in MI's bias ``(r-1)(c-1) / (2n)``
    nats (Miller-Madow / the chi2 approximation ``2 n MI ~ chi2_{(r-1)(c-1)}``) divided by
    ``sqrt(H_a H_b)``.  0 when undefined."""
    if n <= 0 or min(r, c) < 2 or ha <= 0 or hb <= 0:
        return 0.0
    return float(min(1.0, (r - 1) * (c - 1) / (2.0 * n) / np.sqrt(ha * hb)))


def dependence_matrices(x: np.ndarray) -> Dict[str, List[List[float]]]:
    """Pairwise layer dependence of an ``[N, L]`` choice array.

    Returns ``[L][L]`` symmetric matrices ``cramers_v``, ``nmi`` (see :func:`cramers_v`,
    :func:`nmi`) and their independence levels ``cramers_v_chance``, ``nmi_chance``.
    """
    x = np.asarray(x)
    n, num_layers = x.shape
    dense = [_dense(x[:, l]) for l in range(num_layers)]
    ent = [float(entropy(np.bincount(d, minlength=k) / max(n, 1))) for d, k in dense]
    out = {k: np.zeros((num_layers, num_layers)) for k in ("cramers_v", "nmi", "cramers_v_chance", "nmi_chance")}
    for i in range(num_layers):
        for j in range(i, num_layers):
            table = _table(*dense[i], *dense[j])
            (_, ki), (_, kj) = dense[i], dense[j]
            values = {
                "cramers_v": cramers_v_from_table(table),
                "nmi": nmi_from_table(table),
                "cramers_v_chance": cramers_v_chance(ki, kj, n),
                "nmi_chance": nmi_chance(ki, kj, n, ent[i], ent[j]),
            }
            for key, value in values.items():
                out[key][i, j] = out[key][j, i] = value
    return {k: v.tolist() for k, v in out.items()}


def agreement_matrices(x: np.ndarray, num_experts: int) -> Dict[str, List[List[float]]]:
    """Raw expert-index agreement between layers, meaningful when they share a router.

    ``agreement[i][j]`` is the fraction of frames with the same expert index in layers
    ``i`` and ``j``; ``agreement_chance[i][j] = sum_e p_i(e) p_j(e)`` is its value if the
    layers chose independently with their usage distributions ``p``.  0 without frames.
    """
    x = np.asarray(x)
    n, num_layers = x.shape
    agree = np.zeros((num_layers, num_layers))
    if n:
        for i in range(num_layers):
            agree[i] = (x == x[:, i : i + 1]).mean(axis=0)
    frac = usage_fractions(x, num_experts)
    return {"agreement": agree.tolist(), "agreement_chance": (frac @ frac.T).tolist()}


def offdiag_mean(matrix, mask: Optional[np.ndarray] = None) -> Optional[float]:
    """Mean over the pairs ``i < j`` (where ``mask`` is True); None when there are none."""
    m = np.asarray(matrix, dtype=np.float64)
    keep = np.triu(np.ones_like(m, dtype=bool), k=1)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    return float(m[keep].mean()) if keep.any() else None


def adjacent_mean(matrix) -> Optional[float]:
    """Mean over consecutive layer pairs ``(i, i+1)``; None with one layer."""
    m = np.asarray(matrix, dtype=np.float64)
    return float(np.diag(m, k=1).mean()) if len(m) > 1 else None


# ----------------------------------------------------------------------------- time
def switch_counts(utts: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    """Per layer: expert changes between consecutive frames, frame pairs, segments, frames.

    A segment is a maximal run of frames of one utterance with the same expert.
    """
    num_layers = utts[0].shape[1] if len(utts) else 0
    switches = np.zeros(num_layers, dtype=np.int64)
    pairs = segments = frames = 0
    for u in utts:
        t = len(u)
        if t == 0:
            continue
        switches += (u[1:] != u[:-1]).sum(axis=0)
        pairs += t - 1
        segments += 1
        frames += t
    return {"switches": switches, "pairs": pairs, "segments": segments + switches, "frames": frames}


def switch_rate(utts: Sequence[np.ndarray]) -> np.ndarray:
    """``[L]``: fraction of consecutive frame pairs (within an utterance) whose expert differs.

    0 for constant choices, and 0 when no utterance has two frames.
    """
    c = switch_counts(utts)
    return c["switches"] / c["pairs"] if c["pairs"] else np.zeros_like(c["switches"], dtype=np.float64)


def mean_segment_length(utts: Sequence[np.ndarray]) -> np.ndarray:
    """``[L]``: mean length in frames of the runs of one expert (frames / segments); 0 without frames."""
    c = switch_counts(utts)
    segs = c["segments"]
    return np.where(segs > 0, c["frames"] / np.maximum(segs, 1), 0.0)


def shuffle_frames(utts: Sequence[np.ndarray], rng: np.random.Generator) -> List[np.ndarray]:
    """Each utterance's frames in a random order (one permutation per utterance, all layers)."""
    return [u[rng.permutation(len(u))] for u in utts]


def segment_summary(utts: Sequence[np.ndarray], seed: int = 0, num_shuffles: int = 5) -> Dict:
    """Temporal consistency per layer, beside a time-shuffled baseline.

    The baseline shuffles the frames within each utterance (``numpy.random.default_rng(seed)``,
    ``num_shuffles`` times, averaged): it keeps each utterance's expert usage and destroys
    only the order, so ``switch_rate < switch_rate_shuffled`` means that consecutive frames
    go to the same expert more often than their usage alone explains.
    """
    rng = np.random.default_rng(seed)
    rate, seg = switch_rate(utts), mean_segment_length(utts)
    shuf_rate = np.zeros_like(rate, dtype=np.float64)
    shuf_seg = np.zeros_like(seg, dtype=np.float64)
    for _ in range(num_shuffles):
        shuffled = shuffle_frames(utts, rng)
        shuf_rate += switch_rate(shuffled) / num_shuffles
        shuf_seg += mean_segment_length(shuffled) / num_shuffles
    return {
        "seed": seed,
        "num_shuffles": num_shuffles,
        "switch_rate": rate.tolist(),
        "switch_rate_shuffled": shuf_rate.tolist(),
        "mean_segment_length": seg.tolist(),
        "mean_segment_length_shuffled": shuf_seg.tolist(),
    }


# ----------------------------------------------------------------------------- data sets
def jensen_shannon(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jensen-Shannon divergence in bits (``[0, 1]``) between distributions along ``axis``.

    An all-zero input (a set without frames) is treated as uniform.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)

    def norm(d):
        s = d.sum(axis=axis, keepdims=True)
        return np.where(s > 0, d / np.where(s > 0, s, 1.0), 1.0 / d.shape[axis])

    p, q = norm(p), norm(q)
    m = 0.5 * (p + q)
    js = entropy(m, axis=axis) - 0.5 * (entropy(p, axis=axis) + entropy(q, axis=axis))
    return np.clip(js / np.log(2.0), 0.0, 1.0)
