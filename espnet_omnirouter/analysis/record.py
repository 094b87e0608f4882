"""Record which expert every MoE layer chose for every real (non-padded) frame, and its gate.

    >>> from espnet_omnirouter.hub import load_asr_model
    >>> from espnet_omnirouter.analysis import record_routing
    >>> asr_model, _ = load_asr_model("exp/asr_omni/asr_model.zip")
    >>> rec = record_routing(asr_model, "dump/raw/test_clean", max_utts=200)
    >>> rec.experts[0].shape          # [T_0, L]: frames of utterance 0 x MoE layers
"""
import inspect
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_omnirouter.analysis.data import DataSpec, batches, data_name, open_data
from espnet_omnirouter.moe.layer import LayerRouting

logger = logging.getLogger(__name__)


@dataclass
class RoutingRecord:
    """First-choice experts of every MoE layer for the real frames of a set of utterances.

    Attributes:
        experts: one ``[T_u, L]`` int32 array per utterance: the first-choice expert of
            each of its ``T_u`` encoder frames (after subsampling) in each of the ``L`` MoE
            layers, in execution order.  Padded frames are never included.
        utt_ids: the utterance ids, in the order of ``experts``.
        num_experts: ``E``, experts per MoE layer.
        layer_names: qualified module names of the MoE FFNs (``encoders.3.feed_forward``).
        router_ids: per layer, the index of its router module; layers with equal ids share
            one router (all equal for the paper's Omni-router, all distinct for Switch).
        shared_router: the encoder's ``shared_router`` (True for ``omni_router_*``).
        top_k: experts per frame of the routers (only the first choice is recorded).
        name: name of the data set.
        sample_rate: the audio's sample rate (0 when unknown).
        gates: None, or one ``[T_u, L]`` float32 array per utterance, aligned with
            ``experts``: the gate of the first choice (its full-softmax router probability,
            in [1/E, 1]; how confident the router was).
    """

    experts: List[np.ndarray]
    utt_ids: List[str]
    num_experts: int
    layer_names: List[str]
    router_ids: List[int]
    shared_router: bool
    top_k: int = 1
    name: str = ""
    sample_rate: int = 0
    gates: Optional[List[np.ndarray]] = None

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def num_utts(self) -> int:
        return len(self.experts)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.experts], dtype=np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def frames(self) -> np.ndarray:
        """All utterances' frames stacked: ``[N, L]`` int64."""
        if not self.experts:
            return np.zeros((0, self.num_layers), dtype=np.int64)
        return np.concatenate(self.experts, axis=0).astype(np.int64, copy=False)

    def frame_gates(self) -> Optional[np.ndarray]:
        """All utterances' first-choice gates stacked: ``[N, L]`` float32; None if not recorded."""
        if self.gates is None:
            return None
        if not self.gates:
            return np.zeros((0, self.num_layers), dtype=np.float32)
        return np.concatenate(self.gates, axis=0).astype(np.float32, copy=False)

    @classmethod
    def concat(cls, records: Sequence["RoutingRecord"], name: str = "all") -> "RoutingRecord":
        """The utterances of several records of the same model in one record."""
        first = records[0]
        for rec in records[1:]:
            if (rec.num_experts, rec.layer_names, rec.router_ids) != (
                first.num_experts,
                first.layer_names,
                first.router_ids,
            ):
                raise ValueError(f"records {first.name!r} and {rec.name!r} come from different models")
        return cls(
            experts=[x for rec in records for x in rec.experts],
            utt_ids=[u for rec in records for u in rec.utt_ids],
            num_experts=first.num_experts,
            layer_names=list(first.layer_names),
            router_ids=list(first.router_ids),
            shared_router=first.shared_router,
            top_k=first.top_k,
            name=name,
            sample_rate=first.sample_rate,
            gates=(
                [g for rec in records for g in rec.gates]
                if all(rec.gates is not None for rec in records)
                else None
            ),
        )

    def save(self, path: str) -> None:
        """Write a compressed ``.npz`` that :meth:`load` reads back."""
        meta = dict(
            num_experts=self.num_experts,
            layer_names=self.layer_names,
            router_ids=self.router_ids,
            shared_router=self.shared_router,
            top_k=self.top_k,
            name=self.name,
            sample_rate=self.sample_rate,
        )
        gates = {} if self.gates is None else {"gates": self.frame_gates().astype(np.float16)}
        np.savez_compressed(
            path,
            frames=self.frames().astype(np.int32),
            lengths=self.lengths,
            utt_ids=np.array(self.utt_ids, dtype=str),
            meta=np.array(json.dumps(meta)),
            **gates,
        )

    @classmethod
    def load(cls, path: str) -> "RoutingRecord":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            frames, lengths = z["frames"], z["lengths"]
            utt_ids = [str(u) for u in z["utt_ids"]]
            gates = z["gates"].astype(np.float32) if "gates" in z else None
        bounds = np.cumsum(lengths)[:-1]
        experts = np.split(frames, bounds) if len(lengths) else []
        if gates is not None:
            gates = list(np.split(gates, bounds)) if len(lengths) else []
        return cls(experts=list(experts), utt_ids=utt_ids, gates=gates, **meta)


def split_routing(records: Sequence[Optional[LayerRouting]]) -> List[np.ndarray]:
    """Split one forward's MoE routing into per-utterance ``[T_u, L]`` int32 first-choice arrays.

    Each record's ``routing.expert`` rows are the True entries of its ``valid`` ``[B, T]``
    mask in row-major order, so utterance ``b`` owns the next ``valid[b].sum()`` rows.

    Raises:
        ValueError: when a layer did not run, has no padding mask, or when the layers
            disagree about which frames are real.
    """
    return _split(records, _first_expert)[0]


def split_gates(records: Sequence[Optional[LayerRouting]]) -> List[np.ndarray]:
    """As :func:`split_routing`, for the first choice's gate: ``[T_u, L]`` float32 arrays."""
    return _split(records, _first_gate)[0]


def split_routing_and_gates(
    records: Sequence[Optional[LayerRouting]],
) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """:func:`split_routing` and :func:`split_gates` of the same records, validated once."""
    experts, gates = _split(records, _first_expert, _first_gate)
    return experts, gates


def _first_expert(routing) -> torch.Tensor:
    return routing.expert[:, 0].to(torch.int32)


def _first_gate(routing) -> torch.Tensor:
    return routing.gate[:, 0].float()


def _split(records, *takes) -> List[List[np.ndarray]]:
    """Per ``take``, per utterance, the ``[T_u, L]`` stack of ``take(routing)`` over the layers."""
    per_take: List[List[List[np.ndarray]]] = [[] for _ in takes]
    counts = None
    for i, rec in enumerate(records):
        if rec is None:
            raise ValueError(f"MoE layer {i} did not run in this forward (stochastic depth in eval mode?)")
        if rec.valid is None:
            raise ValueError(f"MoE layer {i} ran without a padding mask; cannot tell utterances apart")
        layer_counts = rec.valid.sum(dim=1).cpu().numpy().astype(np.int64)
        if counts is None:
            counts = layer_counts
        elif not np.array_equal(counts, layer_counts):
            raise ValueError(f"MoE layer {i} routed other frames than layer 0: {layer_counts} vs {counts}")
        routed = rec.routing.expert.shape[0]  # every take reads one value per routed frame
        if routed != counts.sum():
            raise ValueError(f"MoE layer {i}: {routed} routed frames but {counts.sum()} real frames")
        bounds = np.cumsum(counts)[:-1]
        for take, per_layer in zip(takes, per_take):
            per_layer.append(np.split(take(rec.routing).detach().cpu().numpy(), bounds))
    if counts is None:
        raise ValueError("no MoE layer records")
    return [
        [np.stack([layer[b] for layer in per_layer], axis=1) for b in range(len(counts))]
        for per_layer in per_take
    ]


def router_ids(encoder) -> List[int]:
    """Per MoE FFN, the index of its router module in order of first appearance."""
    ids: Dict[int, int] = {}
    return [ids.setdefault(id(ffn.router), len(ids)) for ffn in encoder.moe_ffns()]


class _EncoderInput:
    """Forward pre-hook that keeps the encoder's input (features and their lengths)."""

    def __init__(self):
        self.feats = self.lengths = None

    def __call__(self, module, args, kwargs):
        self.feats = args[0] if args else kwargs["xs_pad"]
        self.lengths = args[1] if len(args) > 1 else kwargs["ilens"]


class _AloneLength:
    """Encoder frames of an utterance of ``t`` feature frames when it is encoded alone.

    ESPnet's convolutional subsampling derives its output mask by slicing the input mask,
    which in a padded batch counts 1-2 frames made from padding as real for every
    utterance shorter than the longest.  Run alone (as ``asr_inference`` does) these
    frames do not exist.  The subsampling module is probed once per length on zeros.
    """

    def __init__(self, encoder):
        embed = getattr(encoder, "embed", None)
        try:
            takes_mask = embed is not None and "x_mask" in inspect.signature(embed.forward).parameters
        except (TypeError, ValueError):
            takes_mask = False
        self.embed = embed if takes_mask else None
        self.cache: Dict[int, int] = {}

    def __call__(self, t: int, feats: torch.Tensor) -> Optional[int]:
        if self.embed is None:
            return None
        if t not in self.cache:
            x = feats.new_zeros(1, t, feats.shape[-1])
            mask = torch.ones(1, 1, t, dtype=torch.bool, device=feats.device)
            try:
                _, out_mask = self.embed(x, mask)
                self.cache[t] = int(out_mask.sum())
            except Exception as exc:  # noqa: BLE001 (too short to encode alone: keep ESPnet's count)
                logger.warning("cannot probe the subsampling with %d frames (%s)", t, exc)
                self.cache[t] = -1
        return None if self.cache[t] < 0 else self.cache[t]


@torch.no_grad()
def record_routing(
    asr_model,
    data: DataSpec,
    name: Optional[str] = None,
    max_utts: Optional[int] = None,
    batch_size: int = 1,
    device: Optional[str] = None,
    sort_by_length: bool = True,
) -> RoutingRecord:
    """Encode utterances and record each MoE layer's first-choice expert and gate per real frame.

    Args:
        asr_model: an ESPnet ASR model whose encoder is one of ours (``moe_records()``).
        data: a data directory with ``wav.scp``, a ``wav.scp`` path, ``{utt: waveform}``
            or ``[(utt, waveform), ...]`` (float waveforms at the model's sample rate).
        name: the data set's name (default: the directory's basename, else ``"data"``).
        max_utts: use only the first ``max_utts`` utterances of ``data``.
        batch_size: utterances per forward.  1 (the default) gives exactly what decoding
            with ``asr_inference`` sees.  With larger batches, frames that ESPnet's
            subsampling derives from padding are removed, so frame counts are still those
            of decoding alone, but ESPnet's Conformer convolution module runs without a
            padding mask, so the padding of a batch can still change a few choices.
        device: where to run (default: where the model is).
        sort_by_length: batch utterances of similar lengths (when lengths are cheap to
            know); the record keeps the order of ``data`` either way.

    Returns:
        A :class:`RoutingRecord`, utterances in the order of ``data``.
    """
    encoder = asr_model.encoder
    if not hasattr(encoder, "moe_records"):
        raise TypeError(f"{type(encoder).__name__} is not a MoE encoder of espnet_omnirouter")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ffns = encoder.moe_ffns()
    num_experts = {f.router.num_experts for f in ffns}
    if len(num_experts) != 1:
        raise ValueError(f"MoE layers have different numbers of experts: {sorted(num_experts)}")
    if device is not None:
        asr_model.to(device)
    device = next(asr_model.parameters()).device

    source = open_data(data)
    indices = list(range(len(source)))[: max_utts if max_utts is not None else None]
    if not indices:
        raise ValueError(f"{data}: no utterances")
    if sort_by_length and batch_size > 1:
        lengths = {i: source.num_samples(i) for i in indices}
        if all(n is not None for n in lengths.values()):
            indices.sort(key=lambda i: -lengths[i])

    was_training = asr_model.training
    asr_model.eval()
    grab = _EncoderInput()
    handle = encoder.register_forward_pre_hook(grab, with_kwargs=True)
    alone = _AloneLength(encoder)
    out: Dict[str, np.ndarray] = {}
    out_gates: Dict[str, np.ndarray] = {}
    rates = set()
    try:
        for batch in batches(source, indices, batch_size):
            utts = [utt for utt, _, _ in batch]
            rates.update(rate for _, _, rate in batch)
            lens = torch.tensor([len(w) for _, w, _ in batch], dtype=torch.long)
            speech = torch.zeros(len(batch), int(lens.max()), dtype=torch.float32)
            for b, (_, wav, _) in enumerate(batch):
                speech[b, : len(wav)] = torch.from_numpy(wav)
            _, enc_lens = asr_model.encode(speech.to(device), lens.to(device))
            per_utt, gates = split_routing_and_gates(encoder.moe_records())
            counts = np.array([len(x) for x in per_utt])
            if getattr(asr_model, "postencoder", None) is None and not np.array_equal(
                counts, enc_lens.cpu().numpy()
            ):
                raise RuntimeError(f"routed frames per utterance {counts} != encoder output lengths {enc_lens}")
            feat_lens = grab.lengths.cpu().tolist()
            for b, utt in enumerate(utts):
                if utt in out:
                    raise ValueError(f"{data}: utterance id {utt!r} appears twice")
                keep = len(per_utt[b])
                if feat_lens[b] < grab.feats.shape[1]:
                    n = alone(int(feat_lens[b]), grab.feats)
                    keep = keep if n is None else min(keep, n)
                out[utt] = np.ascontiguousarray(per_utt[b][:keep])
                out_gates[utt] = np.ascontiguousarray(gates[b][:keep])
    finally:
        handle.remove()
        asr_model.train(was_training)
    if len(rates) > 1:
        logger.warning("%s: several sample rates %s", data, sorted(rates))
    if name is None:
        name = data_name(data) if isinstance(data, (str, os.PathLike)) else "data"
    keys = source.keys()
    order = [keys[i] for i in sorted(indices)]
    return RoutingRecord(
        experts=[out[u] for u in order],
        utt_ids=order,
        num_experts=num_experts.pop(),
        layer_names=list(encoder.moe_names),
        router_ids=router_ids(encoder),
        shared_router=bool(getattr(encoder, "shared_router", False)),
        top_k=ffns[0].router.top_k,
        name=name,
        sample_rate=max(rates) if rates else 0,
        gates=[out_gates[u] for u in order],
    )
