"""A step's command line is derived from its declared arguments (segflow.step_cli): the
flags the rules pass are exactly the declared ones, values arrive typed, a bad value
names its flag."""

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from conftest import REPO
from segflow.clean import CleanArgs
from segflow.demo import DemoArgs
from segflow.demo_noise_score import NoiseScoreArgs
from segflow.demo_score import DemoScoreArgs
from segflow.eda import EdaArgs
from segflow.ensemble import EnsembleArgs
from segflow.folds import FoldsArgs
from segflow.index import MergeArgs, SplitArgs
from segflow.leaderboard import LeaderboardArgs
from segflow.oof_score import OofScoreArgs
from segflow.predict import PredictArgs
from segflow.pseudo import PseudoArgs
from segflow.settings import ModelSettings
from segflow.step_cli import (
    arg,
    command_line,
    declared_flags,
    flag_of,
    parse_declared,
    run_step,
)
from segflow.submission import WriteArgs
from segflow.train import TrainArgs


@dataclass(frozen=True, kw_only=True)
class Example:
    """A step's arguments of every kind the derivation handles."""

    count: int = arg("a required int")
    ratio: float = arg("a float with a default", default=0.5)
    out: Path = arg("a path")
    name: str = arg("renamed flag", flag="--label")
    maybe: Path | None = arg("optional path", default=None, group="later")
    items: list[Path] | None = arg("several", default=None, nargs="+")
    parsed: list[int] = arg("JSON list", parse=json.loads)
    mode: str = arg("one of", default="a", choices=["a", "b"])


def test_values_arrive_typed_and_defaults_come_from_the_declaration():
    got = parse_declared(
        Example,
        ["--count", "3", "--out", "x/y.pt", "--label", "n", "--parsed", "[1, 2]"],
        "example",
    )
    assert got == Example(count=3, out=Path("x/y.pt"), name="n", parsed=[1, 2])
    assert got.ratio == 0.5 and got.maybe is None and got.items is None
    full = parse_declared(
        Example,
        ["--count", "1", "--out", "o", "--label", "n", "--parsed", "[]"]
        + ["--ratio", "0.25", "--maybe", "m", "--items", "a", "b", "--mode", "b"],
        "example",
    )
    assert (full.ratio, full.maybe, full.items, full.mode) == (
        0.25,
        Path("m"),
        [Path("a"), Path("b")],
        "b",
    )


def test_a_missing_required_flag_or_a_bad_value_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_declared(Example, ["--out", "o", "--label", "n", "--parsed", "[]"], "e")
    assert "--count" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_declared(
            Example,
            ["--count", "1", "--out", "o", "--label", "n", "--parsed", "[1,"],
            "e",
        )
    err = capsys.readouterr().err
    assert "--parsed" in err and "Expecting" in err  # json's own message is kept
    with pytest.raises(SystemExit):
        parse_declared(
            Example,
            ["--count", "1", "--out", "o", "--label", "n", "--parsed", "[]"]
            + ["--mode", "c"],
            "e",
        )
    assert "--mode" in capsys.readouterr().err


def test_a_type_the_derivation_cannot_parse_is_refused_when_the_parser_is_built():
    @dataclass
    class Unparseable:
        settings: ModelSettings = arg("no parse given")

    with pytest.raises(TypeError, match="settings"):
        command_line(Unparseable, "x")


def test_help_lists_every_declared_flag_with_its_help_and_group():
    text = command_line(Example, "example").format_help()
    for field in fields(Example):
        assert flag_of(field) in text
    assert "renamed flag" in text and "later:" in text


def test_run_step_turns_an_expected_error_into_one_line():
    def failing(arguments):
        raise ValueError(f"{arguments.out}: broken")

    argv = ["--count", "1", "--out", "f.json", "--label", "n", "--parsed", "[]"]
    with pytest.raises(SystemExit, match=r"^ERROR: f.json: broken$"):
        run_step(failing, Example, argv, "e", (ValueError,))


def rule_flags(rule_file: str, step: str) -> set[str]:
    """The flags every shell command of a rule file passes to ``python -m
    segflow.<step>``."""
    text = (REPO / "workflow" / "rules" / rule_file).read_text()
    starts = [m.end() for m in re.finditer(rf"python -m segflow\.{step} ", text)]
    assert starts, f"{rule_file} never runs segflow.{step}"
    return {
        flag
        for start in starts
        for flag in re.findall(
            r"(--[a-z][a-z-]*)", text[start : text.index("> {log}", start)]
        )
    }


@pytest.mark.parametrize(
    "rule_file, step, declared",
    [
        ("train.smk", "train", TrainArgs),
        ("predict.smk", "predict", PredictArgs),
        ("predict.smk", "oof_score", OofScoreArgs),
        ("clean.smk", "demo_noise_score", NoiseScoreArgs),
        ("pseudo.smk", "pseudo", PseudoArgs),
        ("eda.smk", "eda", EdaArgs),
        ("folds.smk", "folds", FoldsArgs),
        ("results.smk", "leaderboard", LeaderboardArgs),
        ("ensemble.smk", "ensemble", EnsembleArgs),
        ("clean.smk", "clean", CleanArgs),
        ("ensemble.smk", "submission write", WriteArgs),
        ("demo.smk", "demo", DemoArgs),
        ("scores.smk", "demo_score", DemoScoreArgs),
        ("data.smk", "index split", SplitArgs),  # with common.smk's index_options
        ("data.smk", "index merge", MergeArgs),
    ],
)
def test_a_rule_passes_exactly_flags_its_step_declares(rule_file, step, declared):
    """Every flag the rule passes is declared, every required flag is passed (the
    index's common options come from common.smk's index_options)."""
    passed = rule_flags(rule_file, step)
    if step == "index split":
        passed |= set(re.findall(r"(--[a-z][a-z-]*)", helper_text("index_options")))
    declared_here = declared_flags(declared)
    assert passed - set(declared_here) == set()
    assert {flag for flag, required in declared_here.items() if required} <= passed


def helper_text(name: str) -> str:
    """The body of one input function of common.smk, up to its return."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    body = common[common.index(f"def {name}") :]
    return body[: body.index("\n\n\n")]


def test_the_round_arguments_are_declared_by_the_train_step():
    """common.smk's round_training_args (the later rounds' flags) against TrainArgs:
    each is declared, and every declared later-round flag is passed by some round."""
    passed = set(re.findall(r"(--[a-z][a-z-]*)", helper_text("round_training_args")))
    declared = {flag_of(f): f for f in fields(TrainArgs)}
    assert passed - set(declared) == set()
    later = {flag for flag, f in declared.items() if f.metadata["group"]}
    assert later <= passed


def test_an_outputs_field_takes_one_out_flag_per_path():
    @dataclass(frozen=True)
    class Written:
        scores: Path
        summary_table: Path

    @dataclass(frozen=True, kw_only=True)
    class Step:
        count: int = arg("n")
        outputs: Written = arg("what it writes", outputs=True)

    got = parse_declared(
        Step,
        ["--count", "2", "--scores-out", "a.csv", "--summary-table-out", "b.json"],
        "s",
    )
    assert got == Step(count=2, outputs=Written(Path("a.csv"), Path("b.json")))
    assert declared_flags(Step) == {
        "--count": True,
        "--scores-out": True,
        "--summary-table-out": True,
    }
    with pytest.raises(SystemExit):
        parse_declared(Step, ["--count", "2", "--scores-out", "a.csv"], "s")
