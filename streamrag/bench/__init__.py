"""Benchmarks with their baselines: ``streamrag bench ppl``, ``streamrag bench latency`` and ``streamrag bench recall``.

Each benchmark runs every policy it compares (the sink cache and its
baselines) in one invocation, on the same model and the same text, and writes
``<out>/<name>.json`` plus ``<out>/<name>.png``. The JSON holds one entry per
policy under the policy's name and a ``ratios`` summary against the sink
cache or the dense reference (recall: per-system accuracies and the
archive's costs instead).
"""

from streamrag.bench.latency import run_latency
from streamrag.bench.ppl import run_ppl
from streamrag.bench.recall import run_recall

__all__ = ["run_latency", "run_ppl", "run_recall"]
