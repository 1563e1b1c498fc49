"""The command-line contract every tool in the repository keeps (issue 23, a newcomer's first hour).

1. ``--help``: every option, positional and subcommand of every argparse command line in
   fastlam/, benchmarks/ and scripts/ says what it is, in plain text (no reST markup). The
   command lines are found by scanning the sources, so a new one is checked without being
   listed here; their parsers are walked recursively through subcommands.
2. Bad files: every command that takes a file or folder answers a text file, a JSON file, an
   empty file, a truncated checkpoint, a missing path and a folder-for-a-file (or a file-for-a-
   folder) with exit status 2 and one line that names the argument or the path: never a
   traceback. Each command's ``main(argv)`` runs in this process on tiny inputs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from fastlam.checkpoint import check_weights_path, load_checkpoint, save_checkpoint
from fastlam.config import to_dict
from fastlam.eval import action_data
from fastlam.models import EncoderConfig, LatentActionWorldModel, ModelConfig, TransformerConfig
from fastlam.models.decoder import DecoderConfig, StateDecoder
from fastlam.nn.lpips import backbone

REPO = Path(__file__).resolve().parents[1]

# ---- 1. help texts ------------------------------------------------------------------------------
# reST that must not reach a terminal: ``literal`` and :role:`target`.
REST = re.compile(r"``|:[A-Za-z]+(?::[A-Za-z]+)?:`")


def cli_files() -> list[str]:
    """Every source file under fastlam/, benchmarks/ and scripts/ that builds an argparse parser."""
    found = []
    for top in ("fastlam", "benchmarks", "scripts"):
        for p in sorted((REPO / top).rglob("*.py")):
            if "ArgumentParser(" in p.read_text(encoding="utf-8"):
                found.append(p.relative_to(REPO).as_posix())
    return found


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def _module(rel: str):
    if rel.startswith("scripts/"):  # scripts/ is no package: load the file itself
        spec = importlib.util.spec_from_file_location(f"_cli_contract_{Path(rel).stem}", REPO / rel)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(rel[:-3].replace("/", "."))


def get_parser(rel: str, monkeypatch) -> argparse.ArgumentParser:
    """The module's ``build_parser()``; for a file without one (fastlam/train.py and
    benchmarks/static_check.py are not this change's to edit) the parser its ``main`` builds,
    caught at the moment it would parse, so nothing runs."""
    mod = _module(rel)
    if hasattr(mod, "build_parser"):
        return mod.build_parser()

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    for name in ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"):
        monkeypatch.setattr(argparse.ArgumentParser, name, capture)
    # static_check refuses to start where the Triton interpreter is on (this suite, on a CPU).
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(_Captured) as got:
        mod.main([])
    return got.value.parser


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the parser and, recursively, every subcommand's parser."""
    yield path, parser
    for action in parser._actions:  # argparse has no public listing of a parser's actions
        if action.nargs == argparse.PARSER:
            for name, sub in action.choices.items():
                yield from walk(sub, path + (name,))


def problems(parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with ``parser``'s help, subcommands included: options, positionals and
    subcommands without help, and reST markup anywhere in what --help prints."""
    out = []
    for _, p in walk(parser):
        where = p.prog  # a subcommand's prog names its whole path ("python -m fastlam.eval plan")
        for text in (p.description, p.epilog):
            if text and REST.search(text):
                out.append(f"{where}: reST markup in the description / epilog: {REST.search(text).group(0)!r}")
        for action in p._actions:
            names = "/".join(action.option_strings) or action.dest
            if action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                out.append(f"{where}: {names} has no help text")
            elif REST.search(action.help):
                out.append(f"{where}: {names}: reST markup in its help: {action.help!r}")
            if action.nargs == argparse.PARSER:
                # argparse keeps a pseudo-action per subcommand added with help= (none without)
                helps = {c.dest: c.help for c in action._choices_actions}
                for name in action.choices:
                    text = helps.get(name) or ""
                    if not text.strip():
                        out.append(f"{where}: subcommand {name} has no help text")
                    elif REST.search(text):
                        out.append(f"{where}: subcommand {name}: reST markup in its help")
        shown = p.format_help()  # also fails on a help string with a stray % sign
        if REST.search(shown):
            out.append(f"{where}: --help prints reST markup: {REST.search(shown).group(0)!r}")
    return out


def test_the_scan_finds_every_known_command_line():
    files = set(cli_files())
    for rel in ("fastlam/eval/cli.py", "fastlam/data/__main__.py", "fastlam/data/samples.py",
                "fastlam/data/transcode.py", "fastlam/models/vjepa2.py", "fastlam/distributed/cli.py",
                "fastlam/train_decoder.py", "fastlam/train.py", "scripts/zero_memory.py",
                "benchmarks/bench_attention.py", "benchmarks/static_check.py"):
        assert rel in files


@pytest.mark.parametrize("rel", cli_files())
def test_every_option_and_subcommand_has_plain_help(rel, monkeypatch):
    found = problems(get_parser(rel, monkeypatch))
    assert not found, "\n".join(found)


def test_the_help_check_catches_missing_help_and_rest_markup():
    ap = argparse.ArgumentParser(prog="demo", description="Uses ``code`` and :func:`load`.")
    ap.add_argument("--fine", help="plain text")
    ap.add_argument("--bare")
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("run")  # no help for the subcommand
    s.add_argument("path", help="see :class:`~fastlam.Thing`")
    found = "\n".join(problems(ap))
    assert "--bare has no help text" in found
    assert "subcommand run has no help text" in found
    assert "reST markup in the description" in found and "path: reST markup" in found
    assert "--fine" not in found


def test_eval_subcommands_are_all_walked(monkeypatch):
    paths = {path for path, _ in walk(get_parser("fastlam/eval/cli.py", monkeypatch))}
    assert {("generate",), ("capacity",), ("ac-baseline",), ("controller",), ("report",),
            ("study-report",), ("study-compare",), ("plan",)} <= paths


# ---- 2. bad files ---------------------------------------------------------------------------------
TEXT = "hello world\nthis is not what the command reads\n"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Tiny real inputs, built once: a LAM (final/ folder and training .pt), a pixel decoder,
    LPIPS backbone weights and simulated arm episodes; the commands reach the bad argument
    through them."""
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(size="tiny", patch_size=8, tubelet=1, width=16, depth=1, heads=2),
                      idm=TransformerConfig(width=16, depth=1, heads=2),
                      predictor=TransformerConfig(width=16, depth=1, heads=2), action_dim=8, image_size=32, frames=4)
    lam = LatentActionWorldModel(cfg).eval()
    lam.save_pretrained(root / "lam")
    # The layout training writes (fastlam.train's checkpoints/latest.pt holds these entries).
    save_checkpoint(root / "lam.pt", {"model": lam.state_dict(), "model_config": json.dumps(to_dict(cfg))})
    StateDecoder(DecoderConfig.for_lam(lam, width=16, depth=1, heads=2)).save_pretrained(root / "decoder")
    torch.save(backbone("alex").features.state_dict(), root / "alex_backbone.pth")
    action_data.generate_arm(root / "arm", episodes=3, steps=4, size=32, mp4_fps=None)
    return root


@pytest.fixture()
def bad(tmp_path, good):
    """name -> a fresh bad path: what a user gets wrong most (every test gets its own copies)."""
    blob = (good / "lam.pt").read_bytes()
    files = {"text": tmp_path / "notes.txt", "json": tmp_path / "settings.json", "empty": tmp_path / "empty.pt",
             "truncated": tmp_path / "half.pt"}
    files["text"].write_text(TEXT)
    files["json"].write_text(json.dumps({"a": [1, 2], "b": "c"}))
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(blob[: len(blob) // 2])  # the first half of a real checkpoint
    files["missing"] = tmp_path / "no" / "such" / "thing.pt"
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_folder" / "stray.txt").write_text("not what the command looks for\n")
    files["folder"] = tmp_path / "a_folder"
    return files


FILES = ("text", "json", "empty", "truncated")  # a file where a folder is expected, too
ALL = FILES + ("missing", "folder")


def run_main(module: str, argv: list, capsys) -> tuple[int, list[str], str]:
    main = importlib.import_module(module).main
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()], err


def assert_one_clear_line(module, argv, capsys, named: tuple[str, ...]):
    rc, lines, err = run_main(module, argv, capsys)
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert any(str(n) in lines[0] for n in named), (named, lines[0])


def _cases():
    """(id, module, argv with BAD where the bad path goes, the argument's name, bad kinds);
    {lam}, {out}, ... are filled in by the test."""
    lam, out = "{lam}", "{out}"
    ev = "fastlam.eval.cli"
    ck = ["--checkpoint", "BAD"]
    return [
        # LAM checkpoints: every eval task that takes one
        ("capacity --checkpoint", ev, ["capacity", *ck, "--data", "synthetic", "--out", out], "--checkpoint", ALL),
        ("leakage --checkpoint", ev, ["leakage", *ck, "--data", "synthetic", "--out", out], "--checkpoint", ALL),
        ("transfer --checkpoint", ev, ["transfer", *ck, "--data", "synthetic", "--out", out], "--checkpoint", ALL),
        ("visualize --checkpoint", ev, ["visualize", *ck, "--data", "synthetic", "--out", out,
                                        "--decoder", "{decoder}"], "--checkpoint", ALL),
        ("controller --checkpoint", ev, ["controller", *ck, "--data", "{arm}", "--out", out], "--checkpoint", ALL),
        ("ac-baseline --checkpoint", ev, ["ac-baseline", *ck, "--data", "{arm}", "--out", out], "--checkpoint", ALL),
        ("plan --checkpoint", ev, ["plan", "arm", *ck, "--data", "{arm}", "--out", out, "--oracle"], "--checkpoint", ALL),
        ("sample --checkpoint", ev, ["sample", *ck, "--data", "synthetic", "--out", out], "--checkpoint", ALL),
        # other weights
        ("leakage --decoder", ev, ["leakage", "--checkpoint", lam, "--data", "synthetic", "--clips", 2, "--out", out,
                                   "--decoder", "BAD", "--lpips-backbone", "{backbone}"], "decoder", ALL),
        ("visualize --decoder", ev, ["visualize", "--checkpoint", lam, "--data", "synthetic", "--out", out,
                                     "--decoder", "BAD"], "decoder", ALL),
        ("leakage --lpips-backbone", ev, ["leakage", "--checkpoint", lam, "--data", "synthetic", "--clips", 2,
                                          "--out", out, "--decoder", "{decoder}", "--lpips-backbone", "BAD"],
         "lpips backbone", ALL),
        ("leakage --lpips-linear", ev, ["leakage", "--checkpoint", lam, "--data", "synthetic", "--clips", 2,
                                        "--out", out, "--decoder", "{decoder}", "--lpips-backbone", "{backbone}",
                                        "--lpips-linear", "BAD"], "lpips linear", ALL),
        ("plan --controller", ev, ["plan", "arm", "--checkpoint", lam, "--data", "{arm}", "--out", out,
                                   "--episodes", 1, "--controller", "BAD"], "controller", ALL),
        ("plan --ac-baseline", ev, ["plan", "arm", "--checkpoint", lam, "--data", "{arm}", "--out", out,
                                    "--episodes", 1, "--ac-baseline", "BAD"], "directory", ALL),
        # data and results
        ("capacity --data (videos)", ev, ["capacity", "--checkpoint", lam, "--data", "BAD", "--out", out],
         "source", ALL),
        ("controller --data (episodes)", ev, ["controller", "--checkpoint", lam, "--data", "BAD", "--out", out],
         "root", ALL),
        ("report --results", ev, ["report", "--results", "BAD"], "--results", ALL),
        ("study-report --results", ev, ["study-report", "--results", "BAD"], "--results", ALL),
        ("study --source", ev, ["study", "--world", "agent", "--source", "BAD", "--out", out, "--kinds"], "--source",
         ("missing", "folder")),
        ("study-compare --results", ev, ["study-compare", "--results", "BAD", "--out", "{out}/c.md"], "--results", ALL),
        # configs
        ("sweep --config", ev, ["sweep", "--config", "BAD", "--kind", "sparse", "--data", "synthetic", "--out", out],
         "--config", ALL),
        ("sweep model.encoder.checkpoint=", ev, ["sweep", "--config", "configs/tiny_cpu.yaml", "--kind", "sparse",
                                                 "--values", 0.1, "--data", "synthetic", "--clips", 1, "--out", out,
                                                 "model.encoder.kind=vit", "model.encoder.checkpoint=BAD"],
         "model.encoder.checkpoint", ALL),
        ("train --config", "fastlam.train", ["--config", "BAD", f"out_dir={out}"], "--config", ALL),
        ("train model.encoder.checkpoint=", "fastlam.train",
         ["--config", "configs/tiny_cpu.yaml", f"out_dir={out}", "model.encoder.kind=vit",
          "model.encoder.checkpoint=BAD"], "model.encoder.checkpoint", ALL),
        ("train_decoder --config", "fastlam.train_decoder", ["--config", "BAD", f"out_dir={out}"], "--config", ALL),
        ("train_decoder lam=", "fastlam.train_decoder", ["--config", "configs/decoder_tiny_cpu.yaml",
                                                         f"out_dir={out}", "data.source=synthetic", "lam=BAD"],
         "lam", ALL),
        # V-JEPA 2 weights
        ("vjepa2 inspect", "fastlam.models.vjepa2", ["inspect", "BAD"], "checkpoint", ALL),
        ("vjepa2 convert", "fastlam.models.vjepa2", ["convert", "BAD", "{out}/enc.safetensors"], "checkpoint", ALL),
        # data tools
        ("data index (source list)", "fastlam.data.__main__", ["index", "BAD", "--out", "{out}/m.parquet", "--quiet"],
         "source", ALL),
        ("data shard (manifest)", "fastlam.data.__main__", ["shard", "BAD", "--out", out, "--quiet"], "manifest", ALL),
        ("transcode src_dir", "fastlam.data.transcode", ["BAD", out], "src_dir", ALL),
        ("distributed export", "fastlam.distributed", ["export", "BAD", out], "checkpoint", ALL),
        # outputs: a file where a folder goes
        ("generate --out", ev, ["generate", "arm", "--out", "BAD", "--episodes", 1, "--steps", 2, "--size", 16,
                                "--no-mp4"], "--out", FILES),
        ("capacity --out", ev, ["capacity", "--checkpoint", lam, "--data", "synthetic", "--out", "BAD"], "--out", FILES),
        ("data shard --out", "fastlam.data.__main__", ["shard", "{manifest}", "--out", "BAD"], "--out", FILES),
        ("transcode dst_dir", "fastlam.data.transcode", ["{videos}", "BAD"], "dst_dir", FILES),
        ("samples --dest", "fastlam.data.samples", ["--dest", "BAD"], "--dest", FILES),
        ("vjepa2 convert dst", "fastlam.models.vjepa2", ["convert", "{lam}/model.safetensors", "BAD/x.safetensors"],
         "dst", FILES),
    ]


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_files_get_one_clear_line_and_exit_status_2(case, good, bad, tmp_path, capsys):
    _, module, template, name, kinds = case
    manifest = tmp_path / "m.jsonl"  # a valid manifest, for the --out case of shard
    manifest.write_text(json.dumps({"path": str(tmp_path / "v.mp4"), "ok": True, "duration_s": 1.0, "num_frames": 4,
                                    "width": 8, "height": 8, "sar_num": 1, "sar_den": 1}) + "\n")
    (tmp_path / "videos").mkdir()
    fill = {"{lam}": good / "lam", "{decoder}": good / "decoder", "{backbone}": good / "alex_backbone.pth",
            "{arm}": good / "arm", "{manifest}": manifest, "{videos}": tmp_path / "videos"}
    for kind in kinds:
        out = tmp_path / f"out_{kind}"
        argv = []
        for a in template:
            a = str(a).replace("{out}", str(out))
            for key, value in fill.items():
                a = a.replace(key, str(value))
            argv.append(a.replace("BAD", str(bad[kind])))
        assert_one_clear_line(module, argv, capsys, named=(name, bad[kind]))


def test_results_files_that_are_not_what_the_report_reads(good, bad, tmp_path, capsys):
    """--results folders holding a damaged capacity.json / study_pan.json: the file is named."""
    for task, name in (("report", "capacity.json"), ("study-report", "study_pan.json"),
                       ("study-compare", "study_pan.json")):
        for kind in FILES:
            results = tmp_path / f"{task}_{kind}"
            # report and study-compare search the folder recursively; study-report reads its top
            target = results / name if task == "study-report" else results / "run" / name
            target.parent.mkdir(parents=True)
            shutil.copy(bad[kind], target)
            extra = ["--out", tmp_path / "compare.md"] if task == "study-compare" else []
            assert_one_clear_line("fastlam.eval.cli", [task, "--results", results, *extra], capsys,
                                  named=(str(target),))


def test_manifests_with_the_right_suffix_and_the_wrong_content(bad, tmp_path, capsys):
    for kind in FILES:
        for suffix in (".jsonl", ".parquet"):
            m = tmp_path / f"{kind}{suffix}"
            shutil.copy(bad[kind], m)
            assert_one_clear_line("fastlam.data.__main__", ["shard", m, "--out", tmp_path / "shards", "--quiet"],
                                  capsys, named=(str(m),))


def test_a_valid_checkpoint_still_loads_through_every_guard(good, tmp_path, capsys):
    """The guards refuse only what is wrong: the good inputs above pass them."""
    assert set(load_checkpoint(good / "lam.pt")) == {"model", "model_config"}
    assert check_weights_path(good / "lam" / "model.safetensors", expected="x") == good / "lam" / "model.safetensors"
    rc, lines, err = run_main("fastlam.eval.cli", ["capacity", "--checkpoint", good / "lam.pt", good / "lam",
                                                   "--data", "synthetic", "--clips", 1, "--out", tmp_path / "cap"],
                              capsys)
    assert rc == 0 and (tmp_path / "cap" / "capacity.json").is_file(), err
