"""Duo adaptive-compute FFN slots (torch only): each frame takes a big path, a small path or skips.

A Duo slot is a top-1 MoE layer whose experts are :class:`~espnet_omnirouter.moe.paths.PathExperts`
of different widths, one of them empty (Duo-LLM, arXiv 2410.10846).  It keeps
:class:`~espnet_omnirouter.moe.layer.MoEFeedForward`'s padding handling and sort-based
dispatch; only the choice of the path differs, set by a :class:`DuoPolicy`:

* ``learned``: the router's argmax (optionally with a cost bias: ``logits - bias * cost``).
  In training with autograd every path runs on every frame and the gates are
  straight-through: 1 for the chosen path and 0 for the others in the forward pass (so the
  frozen stage-1 backbone sees exactly the activations it was trained with, no Switch-style
  gate scaling), ``d gate_p / d prob_p = 1`` in the backward, so the task loss reaches the
  router through every path's output (``dL/dprob_p = <dL/dy, FFN_p(x)>``).
* ``random``: each frame's path drawn from fixed probabilities (training stage 1).
* ``fixed``: one path for every frame, or one path per batch element (static patterns, oracle search).
  With one path for every frame the slot runs it on all rows directly (like a dense FFN; a
  skip slot computes nothing), without the dispatch.

The output is the chosen path's output with gate 1 (0 for skip and padding).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from espnet_omnirouter.moe import native
from espnet_omnirouter.moe.experts import _optimizer_steps, _scatter_rows, compute_dtype
from espnet_omnirouter.moe.layer import LayerRouting, MoEFeedForward
from espnet_omnirouter.moe.losses import expert_fractions
from espnet_omnirouter.moe.paths import PathExperts
from espnet_omnirouter.moe.router import Router, Routing

PATHS = ("big", "small", "skip")
POLICY_KINDS = ("learned", "random", "fixed")


@dataclass
class DuoPolicy:
    """How a Duo slot picks the path of each frame.

    Attributes:
        kind: "learned", "random" or "fixed" (module docstring).
        probs: random: probability of each path (sums to 1).
        path: fixed: a path index for every frame, or a ``[B]`` int64 tensor, one path per
            batch element.
        cost_bias: learned: subtracted from the logits per unit of relative cost (> 0 spends less).
        generator: random: the generator that draws the paths (None: torch's default).
    """

    kind: str = "learned"
    probs: Optional[Tuple[float, ...]] = None
    path: Union[int, torch.Tensor, None] = None
    cost_bias: float = 0.0
    generator: Optional[torch.Generator] = None

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"Duo policy kind must be one of {POLICY_KINDS}, got {self.kind!r}")
        if self.kind == "random" and self.probs is None:
            raise ValueError("a random Duo policy needs probs")
        if self.kind == "fixed" and self.path is None:
            raise ValueError("a fixed Duo policy needs a path")


class DuoFeedForward(MoEFeedForward):
    """A Duo FFN slot: :class:`MoEFeedForward` over :class:`PathExperts`, routed by ``policy``.

    Args:
        router: a :class:`Router` with one logit per path (top-1).
        experts: the paths.
        own_router: False when the router is shared by several slots and owned by a parent.
    """

    def __init__(self, router: Router, experts: PathExperts, own_router: bool = True):
        if router.top_k != 1:
            raise ValueError(f"a Duo slot routes top-1, got a router with top_k={router.top_k}")
        super().__init__(router, experts, None, own_router)
        self.register_buffer("costs", experts.costs(), persistent=False)
        # Rows of the routing record of a fixed or random choice: one-hot probabilities,
        # zero logits, gate 1 (indexed or expanded, not built per forward).
        self.register_buffer("_eye", torch.eye(experts.num_experts), persistent=False)
        self.register_buffer("_one", torch.ones(1, 1), persistent=False)
        self.policy = DuoPolicy()
        self._plan = None  # (packed copies of the paths, native.SlotPaths), see _native_plan
        self._ones_n: Optional[torch.Tensor] = None  # see _ones
        self._fixed_record = None  # see _fixed_routing

    def __getstate__(self):
        # The native plan is a cache (rebuilt on use), not part of the module.
        return {**super().__getstate__(), "_plan": None, "_ones_n": None, "_fixed_record": None}

    def route(self, frames: torch.Tensor, index: Optional[torch.Tensor], shape: torch.Size) -> Routing:
        policy, num_paths = self.policy, self.experts.num_experts
        if policy.kind == "learned":
            routing = self.router(frames)
            if policy.cost_bias:
                chosen = (routing.logits - policy.cost_bias * self.costs).argmax(-1)
            else:
                chosen = routing.expert[:, 0]
            if self.training and torch.is_grad_enabled():
                # Every path on every frame, the chosen one first (k-major dispatch).
                order = (chosen.unsqueeze(1) + torch.arange(num_paths, device=frames.device)) % num_paths
                probs = routing.probs.gather(1, order)
                hard = torch.zeros_like(probs)
                hard[:, 0] = 1.0
                return Routing(order, hard + probs - probs.detach(), routing.probs, routing.logits)
            return Routing(chosen.unsqueeze(1), self._one.expand(chosen.shape[0], 1), routing.probs, routing.logits)
        if policy.kind == "random":
            probs = torch.tensor(policy.probs, dtype=torch.float32)
            chosen = torch.multinomial(probs, frames.shape[0], replacement=True, generator=policy.generator)
            chosen = chosen.to(frames.device)
        elif isinstance(policy.path, torch.Tensor):
            rows = torch.arange(frames.shape[0], device=frames.device) if index is None else index
            chosen = policy.path.to(frames.device).index_select(0, rows // shape[-1])
        else:  # one path for all frames: views of one row
            n = frames.shape[0]
            expert = torch.full((n, 1), policy.path, dtype=torch.long, device=frames.device)
            probs = self._eye[policy.path].expand(n, num_paths)
            return Routing(expert, self._one.expand(n, 1), probs, self._eye.new_zeros(()).expand(n, num_paths))
        onehot = self._eye.index_select(0, chosen)
        return Routing(chosen.unsqueeze(1), self._one.expand(chosen.shape[0], 1), onehot, torch.zeros_like(onehot))

    def _run(self, flat: torch.Tensor, index: Optional[torch.Tensor], shape: torch.Size):
        """``MoEFeedForward._run``; for float32 CPU inference one C call (:func:`.native.duo_slot`)
        runs the slot where it can: the router (learned policy), the split by path and each
        path's GEMMs on its own frames (skip frames are never read), the scatter into the
        output; one fixed path for all frames is the dense FFN's two GEMMs and nothing else."""
        plan = self._native_plan(flat, index)
        if plan is None:
            return super()._run(flat, index, shape)
        policy, n = self.policy, flat.shape[0] if index is None else index.shape[0]
        flat, index = flat.contiguous(), None if index is None else index.contiguous()
        if policy.kind == "learned":
            shift = policy.cost_bias * self.costs if policy.cost_bias else None
            out, chosen, logits, probs = native.duo_slot(flat, index, plan, self.router.weight, shift)
            routing = Routing(chosen, self._ones(n), probs, logits)
        elif policy.kind == "fixed" and not isinstance(policy.path, torch.Tensor):
            out = native.duo_slot(flat, index, plan, fixed=policy.path)[0]
            routing = self._fixed_routing(policy.path, n)
        else:
            routing = self.route(flat if index is None else flat.index_select(0, index), index, shape)
            out = native.duo_slot(flat, index, plan, path=routing.expert.contiguous())[0]
        return routing, out, out.new_zeros((), dtype=torch.long)

    def _ones(self, n: int) -> torch.Tensor:
        """``[n, 1]`` float32 ones (the gates of a hard choice, CPU): a view, kept for the last ``n``."""
        if self._ones_n is None or self._ones_n.shape[0] != n:
            self._ones_n = torch.ones(1, 1, device=self.costs.device).expand(n, 1)
        return self._ones_n

    def _fixed_routing(self, path: int, n: int) -> Routing:
        """The routing record of ``n`` frames that all take ``path`` (one-hot probabilities, zero
        logits, gate 1): views of constant tensors, kept for the last ``(path, n)``."""
        key = (path, n, self._eye.device)
        if self._fixed_record is None or self._fixed_record[0] != key:
            num_paths = self.experts.num_experts
            expert = torch.full((n, 1), path, dtype=torch.long, device=self._eye.device)
            probs = self._eye[path].expand(n, num_paths)
            routing = Routing(expert, self._ones(n), probs, self._eye.new_zeros(()).expand(n, num_paths))
            self._fixed_record = (key, routing)
        return self._fixed_record[1]

    def _native_plan(self, flat: torch.Tensor, index: Optional[torch.Tensor]) -> Optional[native.SlotPaths]:
        """The paths for :func:`.native.duo_slot` where it computes this forward: float32 CPU
        inference in eval mode, no autograd, no tracing, an activation that the C GEMM applies, the
        paths' ``Experts.impl`` "auto" or "native", at most ``NATIVE_MAX_ROWS`` frames, the kernels
        built; else None.

        The plan (the paths' packed weights and their pointers) is kept while no weight may have
        changed: the same parameters with the same storage and version, no optimizer step since
        (as ``Experts._native_packed``'s copy).  Checked at each call in a few microseconds: at
        batch 1 this check and the C call are all the slot costs besides its GEMMs."""
        if not self._native_inference(flat, index, 1):
            return None
        cached = self._plan
        if cached is not None and cached[0] == self._plan_key(cached[2]):
            return cached[1]
        self._plan = None
        experts = [self.experts.paths[str(p)] if str(p) in self.experts.paths else None
                   for p in range(self.experts.num_experts)]
        if any(e is not None and (e.impl not in ("auto", "native") or e.w1.dtype != torch.float32) for e in experts):
            return None
        act = next(e for e in experts if e is not None).native_act()
        if act == native.ACT_NONE:
            return None
        weights = []
        for e in experts:
            if e is None:
                weights.append(None)
            else:
                w1, w2 = e._native_packed()
                weights.append((w1, e.b1.detach().contiguous(), w2, e.b2.detach().contiguous()))
        watched = [(m, name, m._parameters[name]) for m in filter(None, experts) for name in ("w1", "b1", "w2", "b2")]
        watched.append((self.experts, "impl", None))
        self._plan = (self._plan_key(watched), native.SlotPaths(weights, act), watched)
        return self._plan[1]

    @staticmethod
    def _plan_key(watched) -> tuple:
        """What the plan depends on: each watched parameter (still the module's, its storage and
        version), the paths' ``impl``, and the number of optimizer steps taken in this process."""
        key = [_optimizer_steps[0]]
        for module, name, tensor in watched:
            if tensor is None:
                key.append(tuple(e.impl for e in module.paths.values()))
            else:
                now = module._parameters[name]
                key.append((now is tensor, now.data_ptr(), now._version, now.dtype))
        return tuple(key)

    def _dispatch(self, flat: torch.Tensor, index: Optional[torch.Tensor], routing: Routing):
        """With one fixed path for every frame, that path runs on the routed rows directly
        (a skip slot computes nothing): no sort, no per-path split; otherwise the MoE dispatch."""
        policy = self.policy
        if policy.kind != "fixed" or isinstance(policy.path, torch.Tensor):
            return super()._dispatch(flat, index, routing)
        dropped = self._eye.new_zeros((), dtype=torch.long)
        experts = self.experts.paths[str(policy.path)] if str(policy.path) in self.experts.paths else None
        if experts is None:
            return flat.new_zeros(flat.shape[0], self.experts.d_model, dtype=compute_dtype(flat)), dropped
        if index is None:
            return experts.dense(flat), dropped
        return _scatter_rows(experts.dense(flat.index_select(0, index)), index, flat.shape[0], True), dropped


def duo_path_fractions(records: Sequence[Optional[LayerRouting]], num_paths: int) -> torch.Tensor:
    """``[L, P]`` float32 (detached): fraction of each slot's non-padded frames on each path
    (zeros for a slot that did not run)."""
    rows = []
    for record in records:
        if record is None:
            rows.append(torch.zeros(num_paths))
        else:
            rows.append(expert_fractions(record.routing.expert[:, 0].detach(), num_paths).cpu())
    return torch.stack(rows) if rows else torch.zeros(0, num_paths)


def duo_expected_compute(records: Sequence[Optional[LayerRouting]], costs: torch.Tensor) -> torch.Tensor:
    """Mean over the slots that ran and their frames of the router's expected relative
    cost ``sum_p prob_p * cost_p`` (differentiable; a float32 scalar)."""
    ran = [r.routing.probs for r in records if r is not None and r.routing.probs.shape[0] > 0]
    if not ran:
        return costs.new_zeros(())
    return torch.stack([(p @ costs.to(p)).mean() for p in ran]).mean()


def budget_loss(records: Sequence[Optional[LayerRouting]], costs: torch.Tensor, budget: float) -> torch.Tensor:
    """``(expected compute - budget) ** 2``: pulls the mean compute per frame, relative to all
    big paths, toward ``budget`` (padded frames are not in the records)."""
    return (duo_expected_compute(records, costs) - budget).square()


def duo_stats(records: Sequence[Optional[LayerRouting]], costs: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per slot ``i`` the fractions ``duo{i}_{big,small,skip}`` of its frames on each path, and
    ``duo_compute``: the mean relative FFN compute per frame over the slots that ran (1.0 =
    every slot big).  The keys depend only on the number of slots (DDP gathers them in order)."""
    fractions = duo_path_fractions(records, costs.shape[0])
    out = {}
    for i, row in enumerate(fractions):
        for name, value in zip(PATHS, row.unbind(0)):
            out[f"duo{i}_{name}"] = value
    ran = [i for i, r in enumerate(records) if r is not None]
    out["duo_compute"] = (fractions[ran] @ costs.cpu()).mean() if ran else torch.zeros(())
    return out

