"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLORS = {
    "pki-edge": "#1f77b4",
    "pki-edge-asgi": "#aec7e8",
    "pki-edge-alt": "#17becf",
    "pki-edge-base": "#bcbd22",
    "python-floor": "#9467bd",
    "nginx": "#2ca02c",
    "cfssl": "#ff7f0e",
    "openssl": "#d62728",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Grouped bars per mix: req/s and req/CPU-s of each server (whiskers: min..max over rounds)."""
    plt = _pyplot()
    mixes = list(dict.fromkeys(r["mix"] for r in rows))
    order = list(COLORS)
    servers = sorted(
        dict.fromkeys(r["server"] for r in rows), key=lambda s: order.index(s) if s in order else len(order)
    )
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(servers))
    for ax, key, label in (
        (axes[0], "rps", "requests/s"),
        (axes[1], "req_per_cpu_s", "requests per server CPU-second"),
    ):
        for i, server in enumerate(servers):
            xs, ys, lo, hi = [], [], [], []
            for m, mix in enumerate(mixes):
                row = next((r for r in rows if r["server"] == server and r["mix"] == mix), None)
                if row is None or row[key] is None:
                    continue
                xs.append(m + (i - (len(servers) - 1) / 2) * width)
                ys.append(row[key])
                lo.append(row[key] - row[f"{key}_min"])
                hi.append(row[f"{key}_max"] - row[key])
            ax.bar(xs, ys, width, label=server, color=COLORS.get(server), yerr=[lo, hi], capsize=2)
        ax.set_xticks(range(len(mixes)))
        ax.set_xticklabels(mixes)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Latency percentiles at a fixed offered rate, one panel per mix, log scale."""
    plt = _pyplot()
    mixes = list(dict.fromkeys(r["mix"] for r in rows)) or ["(none)"]
    fig, axes = plt.subplots(1, len(mixes), figsize=(6 * len(mixes), 4.5), squeeze=False)
    names = ("p50", "p75", "p90", "p99", "p99.9", "max")
    for ax, mix in zip(axes[0], mixes, strict=True):
        for row in (r for r in rows if r["mix"] == mix):
            values = [row[f"{p}_ms"] for p in names]
            ax.plot(
                names,
                values,
                marker="o",
                label=f"{row['server']} ({row['rps']:.0f} req/s)",
                color=COLORS.get(row["server"]),
            )
        ax.axhline(2.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms")
        first = next((r for r in rows if r["mix"] == mix), None)
        ax.set_title(f"{mix} at ≈{first['target_rps']:.0f} req/s offered" if first else mix, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
