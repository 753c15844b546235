"""Learning-curve pictures at the end of a run: one PNG per task, one for all loss terms."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(h["step"], h[key]) for h in history if key in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot(path: Path, title: str, curves: dict[str, tuple[list[int], list[float]]], stages) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100, layout="constrained")
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, linewidth=1.4)
    for step, name in stages:
        ax.axvline(step, color="0.8", linewidth=0.8)
        ax.text(step, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="0.4")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def plot_learning_curves(history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``<task>.png`` (that task's LM loss) and ``losses.png`` (total, LM and per-decoder
    loss, and the link states' drift that a ``keep_links`` stage holds down)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not history:
        return []
    stages, seen = [], set()
    for h in history:
        if h["stage"] not in seen:
            seen.add(h["stage"])
            stages.append((h["step"], h["stage"]))
    keys = sorted({k for h in history for k in h})
    written = []
    for key in keys:
        m = re.fullmatch(r"task/(.+)/lm_loss", key)
        if m:
            path = out_dir / f"{m.group(1)}.png"
            _plot(path, f"task {m.group(1)}: LM loss", {"lm_loss": _series(history, key)}, stages)
            written.append(path)
    # Total, LM and each decoder's share of the total (the sum of its terms: a decoder logs
    # dozens of auxiliary terms, too many to tell apart as separate curves).
    curves = {k: _series(history, k) for k in ("loss", "lm_loss", "keep_links") if k in keys}
    terms: dict[str, list[str]] = {}
    for k in keys:
        if "." in k and not k.startswith("task/"):
            terms.setdefault(k.split(".")[0], []).append(k)
    for dec, ks in terms.items():
        pts = [(h["step"], sum(h[k] for k in ks if k in h)) for h in history if any(k in h for k in ks)]
        label = f"{dec} ({len(ks)} term{'s' if len(ks) > 1 else ''})"
        curves[label] = ([p[0] for p in pts], [p[1] for p in pts])
    path = out_dir / "losses.png"
    _plot(path, "loss: total, LM and per decoder", curves, stages)
    written.append(path)
    return written
