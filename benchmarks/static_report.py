"""Verdicts and reports of ``python -m benchmarks.static_check``: one row per (configuration,
architecture), the pass / fail rule, the H100 roofline floor, and the markdown, CSV and JSON
files the check writes (``benchmarks/results/static``)."""
from __future__ import annotations

import csv
import datetime
import io
import json
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

# Largest dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin),
# the figure Triton compares `metadata.shared` with before it launches.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
ARCH_NAME = {80: "A100 (sm_80)", 86: "sm_86", 89: "sm_89", 90: "H100 (sm_90)"}

# Roofline figures measured on the lent H100 (kernels-and-env.md): dense bf16 matmul, HBM copy.
H100_FLOPS = 800e12
H100_BYTES_PER_S = 3.0e12


# --------------------------------------------------------------------------------------------
# verdicts and the report
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    config: str
    kernel: str
    arch: int | None
    num_warps: int | None = None
    num_stages: int | None = None
    default: bool = False
    expects_mma: bool = False
    ref_shape: str = ""
    flops: float = 0.0
    min_bytes: float = 0.0
    shared: int | None = None
    regs: int | None = None
    stack: int | None = None
    local: int | None = None
    hgmma: int | None = None
    hmma: int | None = None
    dtype: str = ""  # element type of the kernel's first pointer argument: the data it streams
    error: str | None = None
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def mma(self) -> str:
        if self.error or self.hgmma is None:
            return ""
        if self.hgmma:
            return f"HGMMA x{self.hgmma}"
        if self.hmma:
            return f"HMMA x{self.hmma}"
        return "none"


def judge(row: Row) -> Row:
    """Fill ``row.failures`` (the check fails) and ``row.notes`` (shown for review, never fail)."""
    if row.error:
        if row.error.startswith("RegistryEntryError: "):
            row.failures.append("registry entry: " + row.error[len("RegistryEntryError: "):])
        else:
            kind = "import error" if row.arch is None else "compile error"
            row.failures.append(f"{kind}: {first_line(row.error)}")
        return row
    limit = SHARED_LIMIT[row.arch]
    if row.shared > limit:
        row.failures.append(f"shared {row.shared} B > {limit} B usable on sm_{row.arch}")
    if row.stack:
        if row.default:
            row.failures.append(f"STACK {row.stack} B (spills) in a default configuration")
        else:
            row.notes.append(f"STACK {row.stack} B (spills; not a default configuration)")
    if row.expects_mma:
        if row.arch >= 90 and not row.hgmma:
            row.notes.append("no HGMMA" + (" (HMMA only)" if row.hmma else ""))
        elif row.arch < 90 and not row.hmma:
            row.notes.append("no HMMA")
    if row.regs is not None and row.regs >= 255:
        row.notes.append("REG at the 255 cap")
    return row


def first_line(text: str) -> str:
    """The line of a compile error that says what is wrong (Triton puts the source first)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    head = lines[0]
    # CompilationError: "...at L:C:\n<source>\n   ^\n<message>": the message is the last line.
    if "CompilationError" in head and len(lines) > 1:
        return f"{head.split(':', 1)[0]}: {lines[-1]}"[:300]
    return head[:300]


def roofline(flops: float, min_bytes: float) -> dict:
    """H100 time floor for the reference shape: the slower of the compute and memory limits."""
    if not flops and not min_bytes:
        return {"floor_us": None, "bound": "", "intensity": None}
    t_compute = flops / H100_FLOPS
    t_memory = min_bytes / H100_BYTES_PER_S
    return {
        "floor_us": max(t_compute, t_memory) * 1e6,
        "bound": "compute" if t_compute >= t_memory else "memory",
        "intensity": flops / min_bytes if min_bytes else None,
    }


def _fmt_floor(us) -> str:
    if us is None:
        return ""
    return f"{us:.3g}" if us < 100 else f"{us:.0f}"


def roofline_note(row: Row) -> str:
    r = roofline(row.flops, row.min_bytes)
    if r["floor_us"] is None:
        return "no FLOPs/bytes registered"
    inten = f", {r['intensity']:.3g} FLOP/B" if r["intensity"] is not None else ""
    return f"floor {_fmt_floor(r['floor_us'])} us, {r['bound']}-bound{inten}"


CSV_FIELDS = [
    "kernel", "config", "arch", "dtype", "num_warps", "num_stages", "shared_bytes", "shared_limit",
    "regs", "stack", "mma", "default", "expects_mma", "verdict", "failures", "notes", "ref_shape",
    "flops", "min_bytes", "h100_floor_us", "bound", "roofline", "error",
]


def _csv_row(row: Row) -> dict:
    r = roofline(row.flops, row.min_bytes)
    return {
        "kernel": row.kernel, "config": row.config, "arch": "" if row.arch is None else f"sm_{row.arch}",
        "dtype": row.dtype,
        "num_warps": row.num_warps, "num_stages": row.num_stages, "shared_bytes": row.shared,
        "shared_limit": SHARED_LIMIT.get(row.arch, ""), "regs": row.regs, "stack": row.stack,
        "mma": row.mma, "default": int(row.default), "expects_mma": int(row.expects_mma),
        "verdict": "pass" if row.passed else "FAIL", "failures": "; ".join(row.failures),
        "notes": "; ".join(row.notes), "ref_shape": row.ref_shape, "flops": f"{row.flops:.6g}",
        "min_bytes": f"{row.min_bytes:.6g}",
        "h100_floor_us": "" if r["floor_us"] is None else f"{r['floor_us']:.4g}",
        "bound": r["bound"], "roofline": roofline_note(row) if row.arch is not None else "",
        "error": row.error or "",
    }


def write_csv(rows: list, path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in _csv_row(row).items()})
    path.write_text(buf.getvalue())


def _natural(key) -> list:
    """Sort key that orders D=32 before D=128."""
    out = []
    for part in key:
        text = str(part)
        out.append([(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)])
    return out


def _name_list(names) -> str:
    names = sorted(names, key=lambda n: _natural([n]))
    shown = ", ".join(f"`{_md_cell(n)}`" for n in names[:2])
    return shown + (f" +{len(names) - 2} more" if len(names) > 2 else "")


def _md_cell(text) -> str:
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list, archs: list, n_configs: int, triton_version: str, argv_note: str) -> str:
    compiled = [r for r in rows if r.arch is not None]
    failing = [r for r in rows if not r.passed]
    defaults = [r for r in compiled if r.default]
    spilling = [r for r in defaults if r.stack]
    unbuilt = [r for r in defaults if r.error]
    out = [
        "# Ahead-of-time compile report",
        "",
        f"Generated by `python -m benchmarks.static_check{argv_note}` with triton {triton_version}; "
        "regenerate it, do not edit it. How to read it: [README.md](README.md).",
        "",
        f"**{n_configs} configurations x {len(archs)} targets "
        f"({', '.join(f'sm_{a}' for a in archs)}) = {len(compiled)} compiles: "
        f"{len(failing)} failing.** Default configurations spill-free (STACK 0): "
        + ("yes" if not spilling and not unbuilt else
           f"NO ({len(spilling)} spill, {len(unbuilt)} did not build)")
        + f" ({len(defaults)} default compiles).",
        "",
    ]
    if not rows:
        out += ["No kernel configurations are registered.", ""]
        return "\n".join(out)

    # One roofline line per kernel, reference shape and dtype; its tile choices share FLOPs and bytes.
    groups: dict = {}
    for r in compiled:
        key = (r.kernel, r.ref_shape, r.dtype, r.flops, r.min_bytes)
        groups.setdefault(key, set()).add(r.config)
    out += [
        f"## Roofline per kernel (H100 floor = max(FLOPs / {H100_FLOPS / 1e12:.0f} TFLOP/s, "
        f"bytes / {H100_BYTES_PER_S / 1e12:.1f} TB/s))",
        "",
        "| kernel | reference shape | dtype | GFLOP | min MB | FLOP/byte | H100 floor (us) | bound | configs |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for (kernel, shape, dtype, flops, nbytes), names in sorted(groups.items(), key=lambda kv: _natural(kv[0])):
        r = roofline(flops, nbytes)
        inten = "" if r["intensity"] is None else f"{r['intensity']:.3g}"
        out.append(
            f"| `{kernel}` | {_md_cell(shape) or '(none registered)'} | {dtype} | {flops / 1e9:.4g} | "
            f"{nbytes / 1e6:.4g} | {inten} | {_fmt_floor(r['floor_us'])} | {r['bound']} | {_name_list(names)} |")
    out += [
        "",
        "## Configurations",
        "",
        "| config | arch | warps | stages | shared B (% of limit) | REG | STACK | MMA | default "
        "| verdict | notes | roofline |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        if r.arch is None:
            continue
        if r.error:
            shared = ""
        else:
            shared = f"{r.shared} ({100 * r.shared / SHARED_LIMIT[r.arch]:.0f}%)"
        verdict = "pass" if r.passed else "**FAIL**: " + "; ".join(r.failures)
        out.append(
            f"| `{_md_cell(r.config)}` | sm_{r.arch} | {r.num_warps} | {r.num_stages} | {shared} | "
            f"{'' if r.regs is None else r.regs} | {'' if r.stack is None else r.stack} | {r.mma} | "
            f"{'yes' if r.default else 'no'} | {_md_cell(verdict)} | {_md_cell('; '.join(r.notes))} | "
            f"{roofline_note(r)} |")
    if failing:
        out += ["", "## Failures", ""]
        for r in failing:
            where = "import" if r.arch is None else f"sm_{r.arch}"
            out.append(f"### `{r.config}` ({where})")
            out.append("")
            out.append("; ".join(r.failures))
            if r.error and not r.error.startswith("RegistryEntryError"):  # else the line above says it all
                out += ["", "```", r.error.strip(), "```"]
            out.append("")
    return "\n".join(out).rstrip() + "\n"



META_NAME = "static_report.json"


def report_meta(rows: list, archs: list, n_configs: int, argv: list) -> dict:
    """What the report was made with (the versions that decide REG / STACK) and its verdict."""
    import torch
    import triton

    from benchmarks._common import git_commit  # run as python -m benchmarks.static_check

    compiled = [r for r in rows if r.arch is not None]
    return {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "command": "python -m benchmarks.static_check" + "".join(f" {a}" for a in argv),
        "archs": [f"sm_{a}" for a in archs],
        "configs": n_configs,
        "compiles": len(compiled),
        "failing": sum(not r.passed for r in rows),
        "default_spills": sorted(f"{r.config} (sm_{r.arch}) STACK {r.stack} B"
                                 for r in compiled if r.default and r.stack),
    }


def read_report_triton(out_dir: Path) -> str | None:
    """The triton version a report folder was made with (its json; older reports: the md)."""
    meta = Path(out_dir) / META_NAME
    if meta.exists():
        return json.loads(meta.read_text()).get("triton")
    md = Path(out_dir) / "static_report.md"
    if md.exists():
        m = re.search(r"with triton (\S+?);", md.read_text())
        return m.group(1) if m else None
    return None

