"""benchmarks/bench_train_step.py's results: the comparisons of fastlam against the other
backends, the printed summary, train_step.json / .csv (rewritten after every backend, so a
timeout keeps what was measured) and train_step.png."""
from __future__ import annotations

import json
from pathlib import Path

try:  # run as a script (python benchmarks/bench_x.py) or as a module
    from benchmarks._common import pyplot_or_none
    from benchmarks.result_files import save_figure, write_rows_csv
    from benchmarks.train_step_cases import VARIANTS
except ImportError:  # pragma: no cover
    from _common import pyplot_or_none
    from result_files import save_figure, write_rows_csv
    from train_step_cases import VARIANTS

FIELDS = ["size", "mode", "backend", "status", "batch", "steps_timed", "step_ms", "wall_step_ms", "tokens_per_clip",
          "tokens_per_s", "clips_per_s", "encoder_ms", "idm_ms", "predictor_ms", "losses_ms", "optimizer_ms",
          "peak_mem_gb", "train_flop_per_clip", "model_tflops", "mfu", "mfu_datasheet", "steps_run", "loss_first", "loss_last",
          "warmup_s"]


def comparisons(rows) -> list[dict]:
    """fastlam against the others per (size, mode), with the issue's targets at paper size."""
    out = []
    ok = [r for r in rows if r.get("status") == "ok"]
    for key in sorted({(r["size"], r["mode"]) for r in ok}):
        group = {r["backend"]: r for r in ok if (r["size"], r["mode"]) == key}
        ours = group.get("fastlam_triton")
        if not ours:
            continue
        c = dict(size=key[0], mode=key[1])
        for other in ("reference", "reference_compiled", "flex_attention", "fastlam_compiled"):
            if other in group:
                c[f"speedup_vs_{other}"] = round(ours["tokens_per_s"] / group[other]["tokens_per_s"], 3)
                if ours.get("peak_mem_gb") and group[other].get("peak_mem_gb"):
                    c[f"memory_vs_{other}"] = round(ours["peak_mem_gb"] / group[other]["peak_mem_gb"], 3)
        if key[0] == "paper":
            c["targets"] = "speedup_vs_reference >= 1.5, speedup_vs_reference_compiled >= 1.2, memory_vs_reference <= 0.7"
        out.append(c)
    return out


def summary(rows) -> str:
    lines = []
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['size']}/{r['mode']}/{r['backend']}: {r['status']}")
            continue
        mem = f", peak {r['peak_mem_gb']} GiB" if r.get("peak_mem_gb") is not None else ""
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        lines.append(f"{r['size']}/{r['mode']}/{r['backend']}: B={r['batch']} step {r['step_ms']:.1f} ms, "
                     f"{r['tokens_per_s']:.0f} tokens/s{mem}{mfu}, loss {r['loss_first']:.5f} -> {r['loss_last']:.5f}")
    for c in comparisons(rows):
        lines.append(json.dumps(c))
    return "\n".join(lines)


def write_results(out: Path, rows, meta, notes, plot_png: bool = False) -> None:
    """(Re)write JSON and CSV after every backend, so a timeout keeps what was measured."""
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(meta=dict(meta, notes=list(notes)), rows=rows, comparisons=comparisons(rows))
    (out / "train_step.json").write_text(json.dumps(payload, indent=1))
    write_rows_csv(out / "train_step.csv", rows, meta, FIELDS)
    if plot_png:
        plot(rows, meta, out / "train_step.png")


def plot(rows, meta, path: Path) -> Path | None:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return None
    plt = pyplot_or_none()
    if plt is None:
        return None
    cases = sorted({(r["size"], r["mode"]) for r in ok})
    backends = [b for b in VARIANTS if any(r["backend"] == b for r in ok)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    width = 0.8 / max(len(backends), 1)
    get = lambda b, c, k: next((r[k] or 0 for r in ok if r["backend"] == b and (r["size"], r["mode"]) == c), 0)  # noqa: E731
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens/s"), (axes[1], "peak_mem_gb", "peak memory (GiB)")):
        for i, b in enumerate(backends):
            ax.bar([j + i * width for j in range(len(cases))], [get(b, c, key) for c in cases], width, label=b)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels([f"{s}\n{m}" for s, m in cases])
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    if not any(r.get("peak_mem_gb") for r in ok):
        axes[1].text(0.5, 0.5, "peak memory is measured on CUDA only", ha="center", transform=axes[1].transAxes)
    # Step-time split of every (case, backend), stacked.
    parts = ["encoder", "idm", "predictor", "losses", "optimizer"]
    labels = [f"{s}/{m}\n{b}" for s, m in cases for b in backends if get(b, (s, m), "step_ms")]
    bottoms = [0.0] * len(labels)
    for part in parts:
        vals = [get(b, (s, m), f"{part}_ms") for s, m in cases for b in backends if get(b, (s, m), "step_ms")]
        axes[2].bar(range(len(labels)), vals, bottom=bottoms, label=part)
        bottoms = [x + y for x, y in zip(bottoms, vals)]
    axes[2].set_xticks(range(len(labels)))
    axes[2].set_xticklabels(labels, fontsize=6, rotation=90)
    axes[2].set_ylabel("step time (ms)")
    axes[2].legend(fontsize=8)
    return save_figure(plt, fig, path, f"LAM training step on {meta['device']} ({meta['dtype']}, "
                                       f"{str(meta['commit'])[:10]}, {meta['date'][:10]})")
