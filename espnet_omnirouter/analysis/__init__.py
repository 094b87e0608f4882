"""Routing analysis: how experts are used, how layers' choices depend on each other, and how
routing evolves over time (see ``python -m espnet_omnirouter.bin.analyze_routing --help``).

* :func:`record_routing` encodes utterances and returns a :class:`RoutingRecord` with, per
  utterance, the ``[T_u, L]`` first-choice experts of its real frames;
* :mod:`~espnet_omnirouter.analysis.metrics`: numpy-only metrics (usage entropy, Cramer's V,
  NMI, index agreement, switch rate, segment length, Jensen-Shannon divergence);
* :mod:`~espnet_omnirouter.analysis.plots`: the figures (Agg canvas, no display);
* :func:`analyze` / :func:`analyze_records`: everything above, written to a directory.
"""
from espnet_omnirouter.analysis import metrics
from espnet_omnirouter.analysis.data import WavScp, data_name
from espnet_omnirouter.analysis.record import (
    RoutingRecord,
    record_routing,
    split_gates,
    split_routing,
    split_routing_and_gates,
)
from espnet_omnirouter.analysis.report import analyze, analyze_records, compare_summaries, compute

__all__ = [
    "RoutingRecord",
    "WavScp",
    "analyze",
    "analyze_records",
    "compare_summaries",
    "compute",
    "data_name",
    "metrics",
    "record_routing",
    "split_gates",
    "split_routing",
    "split_routing_and_gates",
]
