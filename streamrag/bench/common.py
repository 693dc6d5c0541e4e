"""What both benchmarks share: the benchmark text, KV-cache sizes, progress bars, JSON and figures.

The text is the Python documentation's topic pages that ship with the
standard library (``pydoc_data.topics``): long, fixed for a given Python
version, available offline, and never part of a chat. Figures are drawn with
matplotlib's object API on an Agg canvas, so no global backend is switched and
no display is needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

TEXT_SOURCE = "pydoc_data.topics"
TEXT_JOINER = "\n"  # every topic already ends with a newline, so topics are separated by a blank line
MB = 1024 * 1024


def benchmark_text() -> str:
    """The values of ``pydoc_data.topics.topics`` joined in sorted key order."""
    from pydoc_data.topics import topics

    return TEXT_JOINER.join(topics[key] for key in sorted(topics))


def text_token_ids(tokenizer, count: int | None = None, cycle: bool = False) -> list[int]:
    """The benchmark text tokenized with ``tokenizer``: its first ``count`` tokens.

    With ``cycle=True`` the text repeats when ``count`` exceeds its length
    (latency only needs tokens, not a coherent document); otherwise asking for
    more tokens than the text has is an error.
    """
    ids = list(tokenizer(benchmark_text()).input_ids)
    if count is None:
        return ids
    if count > len(ids):
        if not cycle:
            raise ValueError(f"the benchmark text has only {len(ids):,} tokens; ask for at most that many")
        repeats = math.ceil(count / len(ids))
        ids = ids * repeats
    return ids[:count]


def text_fingerprint(token_ids: Sequence[int]) -> str:
    """Short hash of a token sequence, so two result files can be checked to use the same input."""
    digest = hashlib.sha256(",".join(map(str, token_ids)).encode())
    return digest.hexdigest()[:16]


def cache_nbytes(cache) -> int:
    """Bytes held by the keys and values of any transformers ``Cache`` (dense or sink)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        keys = getattr(layer, "keys", None)
        values = getattr(layer, "values", None)
        if getattr(layer, "is_initialized", False) and keys is not None:
            total += keys.numel() * keys.element_size() + values.numel() * values.element_size()
    return total


def rss_bytes() -> int:
    """Resident memory of this process."""
    import psutil

    return psutil.Process().memory_info().rss


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: timings on a busy machine are worth less, so results record it."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # not available on every platform
        return None


def host_info(started_load: list[float] | None) -> dict[str, Any]:
    """What the numbers were measured on (CPU count, torch threads, load before and after)."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": started_load,
        "load_average_after": load_average(),
    }


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on stderr (stdout stays free for results)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, creating the folder (atomically: a crash leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    staging.replace(path)
    return path


def new_figure(width: float, height: float, ncols: int = 1):
    """A matplotlib figure on an Agg canvas, and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def save_figure(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def rounded(value: float | None, digits: int = 4) -> float | None:
    """Round for JSON; ``None`` stays ``None`` and non-finite values become ``None`` (JSON has no inf)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)
