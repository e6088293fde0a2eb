"""Every README snippet runs as written (doctest-style), so the README cannot drift from the code.

Python blocks run verbatim, in README order, in one shared namespace (a reader pastes them one after the
other into one session), in a scratch folder. Shell blocks: every ``arstudio ...`` command (also the inline
ones in the text) must parse with the real CLI parser, every jobs line of a heredoc must parse as a render
job, the extras named must exist, and the "one image of each class" command is run for real.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
from pathlib import Path

import pytest

import arstudio
from arstudio.cli import build_parser, main
from arstudio.render import parse_job

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code for lang, code in BLOCKS if lang == "bash"]
# Python blocks that cannot run here, by a line they contain, with the reason.
SKIP = {
    'weights="path/to/folder"': "needs LlamaGen's official checkpoints (hundreds of MB, not shipped, online)",
}


def _skip_reason(code: str) -> str | None:
    return next((why for marker, why in SKIP.items() if marker in code), None)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One namespace and one scratch folder for all Python blocks, run in order up to the one asked for."""
    state = {
        "namespace": {"__name__": "__readme__"},
        "ran": 0,
        "dir": tmp_path_factory.mktemp("readme"),
        "after": {},
    }
    yield state


def _run_up_to(session, index: int) -> dict:
    cwd = os.getcwd()
    os.chdir(session["dir"])  # snippets write relative paths (videos/, outputs/)
    try:
        while session["ran"] <= index:
            code = PYTHON[session["ran"]]
            session["ran"] += 1
            if _skip_reason(code) is None:
                exec(compile(code, f"README.md python block {session['ran']}", "exec"), session["namespace"])
            session["after"][session["ran"] - 1] = dict(session["namespace"])  # what each block left
    finally:
        os.chdir(cwd)
    return session["namespace"]


def test_the_readme_has_snippets():
    assert len(PYTHON) >= 8 and len(SHELL) >= 4


@pytest.mark.parametrize("index", range(len(PYTHON)), ids=lambda i: f"python-{i + 1}")
def test_python_snippet_runs_verbatim(index, session):
    reason = _skip_reason(PYTHON[index])
    if reason:
        pytest.skip(reason)
    _run_up_to(session, index)


def test_the_first_snippet_says_what_it_makes(session):
    _run_up_to(session, 0)
    out = session["after"][0]["out"]
    assert len(out.images) == 8 and tuple(out.tokens.shape) == (8, 8, 8)  # "8 PIL images", "(8, 8, 8)"
    assert len(out.metadata) == len(out.seeds) == 8


def test_the_list_presets_comment_names_every_preset():
    comment = re.search(r"print\(arstudio\.list_presets\(\)\)\s*#\s*(.*)", README).group(1)
    patterns = [p.strip() for p in comment.split(",")]
    presets = arstudio.list_presets()
    assert all(fnmatch.filter(presets, p) for p in patterns), patterns  # no name the call does not return
    assert {name for p in patterns for name in fnmatch.filter(presets, p)} == set(presets)


# ---- shell ---------------------------------------------------------------------------------------------
def _commands(text: str) -> list[list[str]]:
    """The argument lists of the ``arstudio`` (or ``-m arstudio.cli``) commands in a shell text."""
    found = []
    for line in text.splitlines():
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part, comments=True)
            for i, word in enumerate(words):
                if word.endswith("arstudio") or word == "arstudio.cli":
                    found.append(words[i + 1 :])
                    break
    return found


def _inline_commands() -> list[list[str]]:
    """Inline ``arstudio ...`` code in the text, except the synopsis lines ([optional] and a|b syntax)."""
    spans = re.findall(r"`([^`]*\barstudio(?: |\.cli )[^`]*)`", README)
    return [c for span in spans if "[" not in span and "|" not in span for c in _commands(span)]


BLOCK_COMMANDS = [c for block in SHELL for c in _commands(block)]
INLINE_COMMANDS = _inline_commands()


def test_the_shell_snippets_have_commands():
    assert len(BLOCK_COMMANDS) >= 3 and len(INLINE_COMMANDS) >= 3


@pytest.mark.parametrize("words", BLOCK_COMMANDS, ids=lambda w: " ".join(w)[:60])
def test_every_shell_command_parses(words):
    args = build_parser().parse_args(words)  # argparse exits (status 2) on a flag that does not exist
    if getattr(args, "preset", None):
        assert args.preset in arstudio.list_presets()


@pytest.mark.parametrize("words", INLINE_COMMANDS, ids=lambda w: " ".join(w)[:60])
def test_every_inline_command_names_real_subcommands_and_flags(words):
    """Inline mentions may leave out required arguments; their subcommands and flags must exist."""
    parser = build_parser()
    for word in words:
        commands = [a.choices for a in parser._actions if isinstance(a.choices, dict)]
        if word.startswith("-") or not commands:  # flags, or the positional arguments of a subcommand
            break
        assert word in commands[0], (word, list(commands[0]))
        parser = commands[0][word]
    parser.add_late_arguments()  # flags built from the strategy registry (added when parsed)
    flags = {s for action in parser._actions for s in action.option_strings}
    assert {w.split("=")[0] for w in words if w.startswith("--")} <= flags


def test_every_jobs_line_in_a_heredoc_parses():
    lines = [
        line
        for block in SHELL
        for heredoc in re.findall(r"<<'(\w+)'\n(.*?)\n\1", block, flags=re.S)
        for line in heredoc[1].splitlines()
    ]
    assert len(lines) >= 2
    for number, line in enumerate(lines, start=1):
        parse_job(json.loads(line), number)


def test_the_extras_named_exist():
    section = (
        (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    )
    extras = set(re.findall(r"^(\w+) = ", section, flags=re.M))
    named = {name for group in re.findall(r"-e '\.\[([\w,]+)\]'", README) for name in group.split(",")}
    named |= set(re.findall(r"add `\[(\w+)\]`", README))
    assert named and named <= extras, named - extras


def test_the_one_image_of_each_class_command_makes_one_image_of_each_class(tmp_path, monkeypatch):
    (command,) = [c for c in BLOCK_COMMANDS if c[:1] == ["generate"] and "shapes-c2i" in c and "--out" in c]
    monkeypatch.chdir(tmp_path)
    assert "one image of each of the 24 shapes classes" in README
    assert main(command) == 0
    images = sorted(p for p in (tmp_path / "outputs").glob("*.png") if p.name != "grid.png")
    assert len(images) == 24 and (tmp_path / "outputs" / "grid.png").is_file()
