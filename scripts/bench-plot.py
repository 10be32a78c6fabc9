#!/usr/bin/env python3
"""Plots of scripts/bench-h2load.sh's results (docs/bench/h2load.jsonl):
throughput against concurrency for castellan and OpenBao, latency
percentiles against concurrency, and castellan's server CPU per certificate
split into the crypto floor and the rest. PNGs beside the data.

    python3 scripts/bench-plot.py docs/bench/h2load.jsonl
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
# Start-to-ready and memory lines are for the tables, not the plots.
rows = [r for r in rows if not r.get("process")]
out = os.path.dirname(sys.argv[1]) or "."
series = {}
for r in rows:
    series.setdefault((r["server"], r["key"]), []).append(r)
for s in series.values():
    s.sort(key=lambda r: r["streams"])


def label(server, key):
    return f"{server} ({key})"


fig, ax = plt.subplots(figsize=(7, 4.5))
for (server, key), s in series.items():
    ax.plot([r["streams"] for r in s], [r["rps"] for r in s], marker="o", label=label(server, key))
ax.set_xscale("log", base=2)
ax.set_xlabel("concurrent streams")
ax.set_ylabel("certificates/s")
ax.set_title("Throughput vs concurrency (h2load, 2 cores shared)")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(out, "throughput.png"), dpi=110)

fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 4), sharey=True)
for ax, ((server, key), s) in zip(axes if len(series) > 1 else [axes], series.items()):
    x = [r["streams"] for r in s]
    for q in ("p50", "p90", "p99", "max"):
        ax.plot(x, [max(r[q], 0.01) for r in s], marker=".", label=q)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(label(server, key), fontsize=10)
    ax.set_xlabel("concurrent streams")
    ax.grid(True, alpha=0.3)
axes[0].set_ylabel("latency (ms)")
axes[0].legend()
fig.suptitle("Latency distribution vs concurrency")
fig.tight_layout()
fig.savefig(os.path.join(out, "latency.png"), dpi=110)

fig, ax = plt.subplots(figsize=(7, 4.5))
bars, labels = [], []
for (server, key), s in series.items():
    if server != "castellan":
        continue
    for r in s:
        if r.get("cpu_us_per_cert"):
            labels.append(f"{key}\n{r['streams']}")
            bars.append((r["floor_us_per_cert"], r["cpu_us_per_cert"] - r["floor_us_per_cert"]))
x = range(len(bars))
ax.bar(x, [b[0] for b in bars], label="crypto floor (CSR verify + sign, aws-lc-rs)")
ax.bar(x, [max(b[1], 0) for b in bars], bottom=[b[0] for b in bars], label="the rest (TLS, HTTP/2, gRPC, checks, encoding)")
ax.set_xticks(list(x))
ax.set_xticklabels(labels, fontsize=8)
ax.set_ylabel("server CPU µs per certificate")
ax.set_title("castellan's CPU per certificate, by key and concurrency")
ax.legend(fontsize=8)
ax.grid(True, axis="y", alpha=0.3)
fig.tight_layout()
fig.savefig(os.path.join(out, "cpu.png"), dpi=110)
print(f"plots written to {out}/throughput.png, latency.png, cpu.png")
