"""Every subcommand, read from the parser itself (a new one is covered without editing this file), given a missing
input file, an output it cannot write, and a zero, negative or NaN value for each numeric option: each must end
with exit code 2 and one line that names the problem, never a traceback, and before any work (issue 39)."""
from __future__ import annotations

import argparse
import math
import os
import signal

import pytest

from pocketnas.cli import argtypes, build_parser, main

CHECKED_TYPES = {getattr(argtypes, n) for n in dir(argtypes) if callable(getattr(argtypes, n))}


def _commands():
    """(argv prefix, parser) of every leaf command."""
    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prefix, parser
            return
        for action in subs:
            for name, sub in action.choices.items():
                yield from walk(sub, prefix + [name])
        if not subs[0].required:  # `pocketnas eval --config ...` is a command of its own
            yield prefix, parser

    yield from walk(build_parser(), [])


COMMANDS = {" ".join(prefix): parser for prefix, parser in _commands()}


def _required_argv(name, parser, path_for):
    """argv that satisfies the parser: every positional and required option given ``path_for(dest)``."""
    argv = name.split()
    if name == "eval":
        return argv + ["--config", path_for("config"), "--model", path_for("config_model")]
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if a.option_strings and not a.required:
            continue
        value = a.choices[0] if a.choices else ("1" if a.type in (int, float) or a.type in CHECKED_TYPES
                                                else path_for(a.dest))
        values = [str(value)]
        argv += values if not a.option_strings else [a.option_strings[0], *values]
    if name == "search":
        argv += ["--data", path_for("data")]
    if name == "train":
        argv += ["--data", path_for("data")]
    return argv


class _Timeout(Exception):
    pass


def _run(argv, capsys, seconds=60):
    """main(argv) in this process (argparse's exit as its code), with a watchdog: a command that starts real work
    instead of refusing fails the test instead of hanging it."""
    def alarm(*_):
        raise _Timeout(f"{argv} did not stop within {seconds} s: it did not refuse its input up front")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    captured = capsys.readouterr()
    return code, captured.err


def _assert_clean_error(code, err, argv, must_name=None):
    assert code == 2, f"{argv}: exit {code}, stderr {err!r}"
    assert "Traceback" not in err, f"{argv}: {err}"
    last = err.strip().splitlines()[-1]
    assert last.startswith("pocketnas"), f"{argv}: {err!r}"
    if must_name:
        assert must_name in err, f"{argv}: {err!r} does not name {must_name}"


def _numeric_options(parser):
    for a in parser._actions:
        if a.option_strings and a.type is not None and a.type is not str:
            yield a


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_numeric_options_use_checked_types(name):
    # a bare int/float type lets 0, -3 or nan through to the library: every number goes through pocketnas.cli.argtypes
    bare = [a.option_strings[0] for a in _numeric_options(COMMANDS[name]) if a.type in (int, float)]
    assert not bare, f"pocketnas {name}: {bare} take an unchecked int/float"


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if list(_numeric_options(COMMANDS[n]))))
def test_bad_numbers_give_one_line_and_exit_2(name, tmp_path, capsys):
    missing = lambda dest: str(tmp_path / f"missing_{dest}")  # noqa: E731  (valid numbers then stop at the file)
    base = _required_argv(name, COMMANDS[name], missing)
    for action in _numeric_options(COMMANDS[name]):
        option = action.option_strings[0]
        for value in ("0", "-3", "nan"):
            parse = action.type
            try:
                accepted = parse(value)
                accepted = accepted == accepted and not (isinstance(accepted, float) and math.isinf(accepted))
            except (argparse.ArgumentTypeError, ValueError, TypeError):
                accepted = False
            argv = base + [option, value]
            code, err = _run(argv, capsys)
            _assert_clean_error(code, err, argv, None if accepted else option)
            assert not os.listdir(tmp_path), f"{argv} wrote {os.listdir(tmp_path)}"


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if n != "models"))
def test_missing_input_gives_one_line_and_exit_2(name, tmp_path, capsys):
    made = []

    def path_for(dest):
        p = tmp_path / f"missing_{dest}"
        made.append(p)
        return str(p)

    argv = _required_argv(name, COMMANDS[name], path_for)
    if name == "demo":  # the demo reads nothing but the bundled faces: its input is the models it is told to build
        argv += ["--models", str(tmp_path / "missing_model.pt"), "--out", str(tmp_path / "demo")]
    code, err = _run(argv, capsys)
    _assert_clean_error(code, err, argv, "missing_")


def _outputs_of(name):
    io = COMMANDS[name]._defaults.get("io")
    if io is None:
        return []
    return list(io.files) + [d for d, _ in io.folders] + ([io.run_folder] if io.run_folder else [])


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if _outputs_of(n)))
def test_unwritable_output_gives_one_line_and_exit_2(name, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    def existing(dest):  # every input exists (the output check comes after the inputs')
        p = tmp_path / f"in_{dest}"
        if dest in ("data", "folder", "photos", "root", "pack", "path"):
            p.mkdir(exist_ok=True)
        elif not p.exists():
            p.write_bytes(b"placeholder")
        return str(p)

    parser = COMMANDS[name]
    for dest in _outputs_of(name):
        action = next(a for a in parser._actions if a.dest == dest)
        argv = _required_argv(name, parser, lambda d: str(blocker / "out") if d == dest
                              else str(tmp_path / f"new_{d}") if d in _outputs_of(name) else existing(d))
        if action.option_strings and not action.required:
            argv += [action.option_strings[0], str(blocker / "out")]
        code, err = _run(argv, capsys)
        _assert_clean_error(code, err, argv, "cannot be written")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_a_user_facing_name(name):
    # issue 42: `--help` is the manual a newcomer reads; internal destination names must not show in it
    parser = COMMANDS[name]
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert a.help, f"pocketnas {name} {a.option_strings or a.dest}: no help text"
    usage = parser.format_help()
    assert "CONFIG_" not in usage, usage


def test_version(capsys):
    from pocketnas import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pocketnas {__version__}"


def test_cli_choices_are_the_registries():
    # issue 40: a new pruner, proxy or search method is one registered piece; the command line offers it at once
    from pocketnas.compress.prune import PRUNERS
    from pocketnas.engine.search_methods import SEARCH_METHODS
    from pocketnas.nas.zero_cost import PROXIES

    def choices(command, option):
        action = next(a for a in COMMANDS[command]._actions if option in a.option_strings)
        return sorted(action.choices)

    assert choices("prune", "--method") == choices("prune", "--methods") == PRUNERS.names()
    assert choices("search", "--method") == SEARCH_METHODS.names()
    assert choices("search", "--proxy") == choices("nas-eval", "--proxies") == PROXIES.names()
