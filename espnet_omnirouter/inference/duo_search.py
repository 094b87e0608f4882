"""Search for static Duo path patterns under a compute budget (the oracle study of Duo-LLM).

A pattern gives each slot one path for every frame: ``B`` (big), ``S`` (small), ``K`` (skip).
:func:`greedy_descent` starts from all-big and repeatedly takes the one-slot downgrade
(``B->S``, ``S->K`` or ``B->K``) with the least loss increase per unit of compute saved,
until the pattern's compute is within each budget in turn (highest first); at each budget it
then keeps taking downgrades while one lowers the loss (a pattern below all-big compute that
beats all-big, Duo-LLM's finding, is found this way).  Its cost is about ``2 * L`` loss
evaluations per step and ``L`` steps at most per unit of budget, against ``3 ** L`` patterns
for exhaustive search (531,441 for 12 slots).

``evaluate`` is any function of a list of patterns to their losses: the reference CTC loss of
one utterance (the per-utterance oracle) or of a development set (the best static pattern).
"""
from typing import Callable, Dict, List, Sequence, Tuple

from espnet_omnirouter.inference.duo import PATTERN_LETTERS

MOVES = (("B", "S"), ("S", "K"), ("B", "K"))


def pattern_cost(pattern: str, costs: Sequence[float]) -> float:
    """Mean over slots of the relative cost of each slot's path (``costs``: big, small, skip)."""
    return sum(float(costs[PATTERN_LETTERS[c]]) for c in pattern) / len(pattern)


def downgrades(pattern: str) -> List[str]:
    """Every pattern one slot cheaper than ``pattern`` (``B->S``, ``S->K``, ``B->K``)."""
    out = []
    for i, letter in enumerate(pattern):
        out += [pattern[:i] + new + pattern[i + 1 :] for old, new in MOVES if letter == old]
    return out


def greedy_descent(
    num_slots: int,
    costs: Sequence[float],
    budgets: Sequence[float],
    evaluate: Callable[[List[str]], List[float]],
) -> Dict[float, Tuple[str, float]]:
    """For each budget, a pattern of compute <= budget and its loss (module docstring).

    Args:
        num_slots: ``L``.
        costs: relative cost of big, small, skip (e.g. ``[1, 1/16, 0]``).
        budgets: compute budgets in [0, 1] relative to all-big.
        evaluate: patterns -> losses (lower is better), one call per search step.

    Returns:
        ``{budget: (pattern, loss)}``.
    """
    eps = 1e-9
    pattern = "B" * num_slots
    loss = evaluate([pattern])[0]
    found = {}
    for budget in sorted(set(budgets), reverse=True):
        while True:
            over = pattern_cost(pattern, costs) > budget + eps
            candidates = downgrades(pattern)
            if not candidates:
                break
            losses = evaluate(candidates)
            if over:
                saved = [pattern_cost(pattern, costs) - pattern_cost(c, costs) for c in candidates]
                best = min(range(len(candidates)), key=lambda i: (losses[i] - loss) / max(saved[i], eps))
            else:
                best = min(range(len(candidates)), key=lambda i: losses[i])
                if losses[best] >= loss:
                    break
            pattern, loss = candidates[best], losses[best]
        found[budget] = (pattern, loss)
    return found
