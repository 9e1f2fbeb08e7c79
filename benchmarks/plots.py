"""PNG plots written next to RESULTS.md."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI or servers

import matplotlib.pyplot as plt

from .primitives import rates_by_workers

__all__ = ["PRIMITIVES", "throughput_vs_workers", "time_vs_m"]

PRIMITIVES = {
    "apply_own": "Key.apply, check=False (own points)",
    "apply_received": "Key.apply, check=True (received points)",
    "hash_to_curve": "hash_to_curve",
}


def throughput_vs_workers(primitives: dict, path: Path) -> None:
    by_workers = rates_by_workers(primitives)
    workers = sorted(by_workers)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label in PRIMITIVES.items():
        ax.plot(workers, [by_workers[w][key][0] for w in workers], "o-", label=label)
    ceiling = [primitives["openssl_per_core"] * w for w in workers]
    ax.plot(workers, ceiling, "k--", label="openssl speed ecdhx25519 x workers")
    ax.set(xlabel="workers", ylabel="operations per second (wall clock)", xticks=workers)
    ax.set_title(f"Throughput by workers ({primitives['size']:,} items per run)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def time_vs_m(rows: list[dict], path: Path) -> None:
    ns = sorted({r["n"] for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(1, len(ns), figsize=(5 * len(ns), 4.2), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        for color, name in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], systems):
            runs = sorted((r["m"], r) for r in rows if r["n"] == n and r["system"] == name)
            if not runs:
                continue
            ms = [m for m, _ in runs]
            ax.plot(ms, [r["wall_s"] for _, r in runs], "o-", color=color, label=f"{name} wall")
            cpu = [r["cpu_self_s"] + r["cpu_children_s"] for _, r in runs]
            ax.plot(ms, cpu, "s--", color=color, alpha=0.6, label=f"{name} CPU")
        ax.set(xscale="log", yscale="log", xlabel="m (server items)", title=f"n = {n:,}")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("seconds")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
