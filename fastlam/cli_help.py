"""Plain-text ``--help`` from reST docstrings.

Module docstrings are written in reST for the API docs (````code````, ``:func:`name```,
``::`` before a literal block). A command line that shows its docstring as its description
passes it through :func:`plain` first, so ``--help`` prints what a reader should type, without
markup.
"""
from __future__ import annotations

import re

__all__ = ["plain"]

_ROLE = re.compile(r":[a-zA-Z]+(?::[a-zA-Z]+)?:`([^`]+)`")
_TARGET = re.compile(r"^(.*?)\s*<[^<>]+>$")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_INTERPRETED = re.compile(r"(?<![`\w])`([^`\n]+)`(?![`\w])")


def _role_text(m: re.Match) -> str:
    text = m.group(1)
    t = _TARGET.match(text)
    if t:  # :func:`the loader <fastlam.checkpoint.load_checkpoint>` -> the loader
        return t.group(1)
    if text.startswith("~"):  # :class:`~fastlam.inputs.InputError` -> InputError
        return text[1:].rsplit(".", 1)[-1]
    return text


def plain(text: str | None) -> str:
    """``text`` without reST inline markup: ````x```` and ```x``` become x, ``:role:`x``` becomes
    x (``~a.b.C`` becomes C, ``label <target>`` becomes label), a paragraph-ending ``::``
    becomes ``:`` and a line holding only ``::`` is dropped. Indentation and line breaks are
    kept, for ``argparse.RawDescriptionHelpFormatter``."""
    if not text:
        return ""
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    lines = []
    for line in text.strip("\n").splitlines():
        if line.strip() == "::":
            continue
        lines.append(re.sub(r"(\S)::$", r"\1:", line.rstrip()))
    return "\n".join(lines)
