"""A step's command line, derived from the step's one declaration of its arguments.

A step declares what it reads, writes and is set by once: a frozen dataclass whose
fields carry their help (:func:`arg`). Python callers build that dataclass; the command
line is derived from it: the flag ``--name-with-dashes`` (or the field's ``flag``), a
required option unless the field has a default, the text turned into the value by the
field's ``parse`` or its type (int, float, str, Path; ``X | None`` as X). A field of
``outputs=True`` is a dataclass of output paths, each its own ``--<name>-out`` flag. So
a flag, its type and its help cannot drift from what the step reads and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

# Types whose text converts by calling the type.
PLAIN_TYPES = (int, float, str, Path)


def arg(
    help: str,
    *,
    default=dataclasses.MISSING,
    parse: Callable[[str], object] | None = None,
    flag: str | None = None,
    nargs: str | None = None,
    choices: typing.Sequence[str] | None = None,
    group: str | None = None,
    outputs: bool = False,
    positional: bool = False,
):
    """A declared argument: ``help`` for its flag, ``parse`` to read its text (else its
    type), ``flag`` to name it otherwise, ``nargs``/``choices`` as in argparse, ``group``
    to list it under a heading of the help; ``outputs``: a dataclass of paths whose
    fields are flags ``--<field>-out``; ``positional``: an argument without a flag. A
    ``bool`` field is a switch (store_true)."""
    meta = {"help": help, "parse": parse, "flag": flag, "nargs": nargs}
    meta |= {"choices": choices, "group": group, "outputs": outputs}
    meta |= {"positional": positional}
    return dataclasses.field(default=default, metadata=meta)


def _output_flags(field: dataclasses.Field, paths: type) -> dict[str, str]:
    """dest -> flag of each output path of an ``outputs`` field."""
    return {
        f"{field.name}.{path.name}": f"--{path.name.replace('_', '-')}-out"
        for path in dataclasses.fields(paths)
    }


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def declared_flags(declared: type) -> dict[str, bool]:
    """Every flag of a declaration -> whether it is required."""
    hints = typing.get_type_hints(declared)
    flags = {}
    for field in dataclasses.fields(declared):
        if field.metadata.get("outputs"):
            flags |= dict.fromkeys(
                _output_flags(field, hints[field.name]).values(), True
            )
        elif not field.metadata.get("positional"):
            flags[flag_of(field)] = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
    return flags


def _converter(field: dataclasses.Field, annotation) -> Callable[[str], object]:
    if field.metadata.get("parse") is not None:
        return _reporting(field.metadata["parse"])
    options = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is (
        typing.Union
    ):
        options = [a for a in options if a is not type(None)]
        annotation = options[0] if len(options) == 1 else annotation
    if typing.get_origin(annotation) is list and field.metadata.get("nargs"):
        annotation = typing.get_args(annotation)[0]
    if annotation in PLAIN_TYPES:
        return annotation
    raise TypeError(f"{field.name}: declare how to parse {annotation!r} (arg(parse=))")


def _reporting(parse: Callable[[str], object]) -> Callable[[str], object]:
    """``parse`` whose errors keep their message: argparse replaces a ValueError's with
    "invalid value" and turns an OSError into a traceback."""

    def parsed(text: str):
        try:
            return parse(text)
        except (ValueError, OSError) as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return parsed


def _add_arguments(parser: argparse.ArgumentParser, declared: type) -> None:
    hints = typing.get_type_hints(declared)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(declared):
        if not field.init:
            continue
        group = field.metadata.get("group")
        target = parser
        if group:
            target = groups.setdefault(group, parser.add_argument_group(group))
        if field.metadata.get("outputs"):
            for dest, flag in _output_flags(field, hints[field.name]).items():
                target.add_argument(
                    flag,
                    dest=dest,
                    type=Path,
                    required=True,
                    metavar="PATH",
                    help=f"{field.metadata['help']}: {dest.split('.')[1]}",
                )
            continue
        help_text = field.metadata.get("help")
        if field.metadata.get("positional"):
            target.add_argument(
                field.name, type=_converter(field, hints[field.name]), help=help_text
            )
            continue
        flag = flag_of(field)
        if hints[field.name] is bool:  # a switch: off unless given
            target.add_argument(
                flag, dest=field.name, action="store_true", help=help_text
            )
            continue
        required = (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        )
        options = {
            "dest": field.name,
            "type": _converter(field, hints[field.name]),
            "help": help_text,
            "metavar": flag.removeprefix("--").replace("-", "_").upper(),
        }
        if required:
            options["required"] = True
        else:
            options["default"] = argparse.SUPPRESS  # the dataclass's default applies
        for key in ("nargs", "choices"):
            if field.metadata.get(key) is not None:
                options[key] = field.metadata[key]
        target.add_argument(flag, **options)


def command_line(declared: type, description: str) -> argparse.ArgumentParser:
    """The argparse parser of a step's declared arguments."""
    parser = argparse.ArgumentParser(description=description)
    _add_arguments(parser, declared)
    return parser


def _build(declared: type, values: dict, parser: argparse.ArgumentParser):
    """The declaration from parsed values; a check of the declaration's own
    (``__post_init__``: one of two flags, say) fails as a usage error."""
    hints = typing.get_type_hints(declared)
    for field in dataclasses.fields(declared):
        if field.metadata.get("outputs"):
            paths = hints[field.name]
            values[field.name] = paths(
                **{
                    dest.split(".")[1]: values.pop(dest)
                    for dest in _output_flags(field, paths)
                }
            )
    try:
        return declared(**values)
    except ValueError as e:
        parser.error(str(e))


def parse_declared(declared: type, argv, description: str):
    """The declared dataclass, built from ``argv``."""
    parser = command_line(declared, description)
    return _build(declared, vars(parser.parse_args(argv)), parser)


def _run(step, arguments, errors: tuple, report) -> None:
    try:
        result = step(arguments)
    except errors as e:
        sys.exit(f"ERROR: {e}")
    line = report(result) if report is not None else ""
    if line:
        print(line, flush=True)


def run_step(
    step: Callable,
    declared: type,
    argv,
    description: str,
    errors: tuple,
    report: Callable[[object], str] | None = None,
) -> None:
    """Parse ``argv`` into ``declared``, run ``step`` on it; an expected error (bad
    input, a missing file) ends the process with one ``ERROR:`` line, no traceback.
    ``report``: the line printed from the step's result (its log's last line; none
    where it is empty)."""
    _run(step, parse_declared(declared, argv, description), errors, report)


def run_commands(
    commands: dict[str, tuple[Callable, type, str]],
    argv,
    description: str,
    errors: tuple,
    report: Callable[[object], str] | None = None,
) -> None:
    """A step with subcommands: name -> (step, its declaration, its help); as
    run_step otherwise."""
    parser = argparse.ArgumentParser(description=description)
    chosen = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, (_, declared, help_text) in commands.items():
        parsers[name] = chosen.add_parser(name, help=help_text, description=help_text)
        _add_arguments(parsers[name], declared)
    values = vars(parser.parse_args(argv))
    name = values.pop("command")
    step, declared, _ = commands[name]
    _run(step, _build(declared, values, parsers[name]), errors, report)
