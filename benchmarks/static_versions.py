"""Summarise the per-triton-release static reports in one table.

    python -m benchmarks.static_versions [--out benchmarks/results/static] VERSION [VERSION ...]

Reads ``OUT/triton-<version>/static_report.{csv,json}`` (written by
``scripts/static_check_versions.sh``) and writes ``OUT/versions.md``: per release the number of
compiles, failures and spilling default configurations, then every configuration that fails or
spills (STACK > 0) under at least one release, with its STACK per release and target.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _version_key(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))


def load(out: Path, version: str) -> tuple[dict, dict]:
    folder = out / f"triton-{version}"
    meta = json.loads((folder / "static_report.json").read_text())
    with open(folder / "static_report.csv", newline="") as f:
        rows = {(r["config"], r["arch"]): r for r in csv.DictReader(f)}
    return meta, rows


def render(out: Path, versions: list) -> str:
    versions = sorted(set(versions), key=_version_key)
    data = {v: load(out, v) for v in versions}
    lines = [
        "# Static check per triton release",
        "",
        "Written by `scripts/static_check_versions.sh` (one throwaway venv per release; "
        "`python -m benchmarks.static_versions` makes this summary). Reports: "
        + ", ".join(f"[triton-{v}](triton-{v}/static_report.md)" for v in versions)
        + "; a `--filter` in a command marks a partial report (only the configurations named).",
        "",
        "| triton | made (UTC) | commit | compiles | failing | default configs that spill | command |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for v in versions:
        meta, _ = data[v]
        if meta["triton"] != v:
            raise SystemExit(f"{out}/triton-{v} was made with triton {meta['triton']}, not {v}")
        lines.append(f"| {v} | {meta['date']} | {meta['commit'][:10]} | {meta['compiles']} | "
                     f"{meta['failing']} | {len(meta['default_spills'])} | `{meta.get('command', '')}` |")
    bad = sorted({key for v in versions for key, r in data[v][1].items()
                  if r["verdict"] != "pass" or (r["stack"] not in ("", "0"))})
    lines += ["", "## Configurations that fail or spill under some release", ""]
    if not bad:
        lines.append("None: every configuration passes and none spills under every release above.")
    else:
        lines += ["STACK bytes per release (`-`: not registered under that release, e.g. another "
                  "tile picked for it); **bold**: fails the check (a default configuration that "
                  "spills, or a compile error).", "",
                  "| config | arch | default | " + " | ".join(versions) + " |",
                  "|---|---|---|" + "---:|" * len(versions)]
        for config, arch in bad:
            cells, default = [], ""
            for v in versions:
                r = data[v][1].get((config, arch))
                if r is None:
                    cells.append("-")
                    continue
                default = "yes" if r["default"] == "1" else "no"
                text = r["stack"] if r["stack"] != "" else "error"
                cells.append(f"**{text}**" if r["verdict"] != "pass" else text)
            lines.append(f"| `{config}` | {arch} | {default} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.static_versions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "static",
                        help="folder holding triton-VERSION/static_report.csv and .json; versions.md is written "
                             "there (default: benchmarks/results/static)")
    parser.add_argument("versions", nargs="+", help="triton releases to compare, e.g. 3.4.0 3.5.0")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    text = render(args.out, args.versions)
    (args.out / "versions.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
