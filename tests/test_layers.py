"""The package's two layers, read from the source: steps import libraries, never steps;
libraries never import steps; the module map in segflow/__init__.py names every module."""

import ast
import dataclasses
import re
from pathlib import Path

import segflow
from conftest import REPO

PACKAGE = REPO / "workflow" / "segflow"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def steps_called_by_rules() -> set[str]:
    """Modules a rule runs with ``python -m segflow.<step>``."""
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"python -m segflow\.(\w+)", text))


def segflow_imports(module: str, package: Path = PACKAGE) -> set[str]:
    """The segflow modules ``module`` imports, at any depth of its code."""
    tree = ast.parse((package / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("segflow."):
                found.add(node.module.split(".")[1])
            elif node.module == "segflow":
                found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("segflow.")
            }
    return found


def test_every_step_is_a_module_with_a_command_line():
    steps = steps_called_by_rules()
    assert steps and steps <= set(MODULES)
    for step in steps:
        assert has_command_line(step)


def test_no_step_imports_another_step_and_no_library_imports_a_step():
    steps = steps_called_by_rules()
    wrong = {
        module: sorted(segflow_imports(module) & (steps - {module}))
        for module in MODULES
        if segflow_imports(module) & (steps - {module})
    }
    assert wrong == {}, f"modules importing a step: {wrong}"


def has_command_line(module: str) -> bool:
    return 'if __name__ == "__main__":' in (PACKAGE / f"{module}.py").read_text()


def test_the_module_map_names_every_module_in_its_layer():
    """Steps (a rule runs them), commands (a user runs them) and libraries, each in its
    own part of the map."""
    doc = segflow.__doc__
    steps_part, rest = doc.split("Commands", 1)
    commands_part, libraries_part = rest.split("Libraries", 1)
    steps = steps_called_by_rules()
    for module in MODULES:
        if module in steps:
            part = steps_part
        elif has_command_line(module):
            part = commands_part
        else:
            part = libraries_part
        assert re.search(rf"\b{module}\b", part), f"{module} missing from the map"


def test_commands_import_no_step():
    commands = {m for m in MODULES if has_command_line(m)} - steps_called_by_rules()
    assert "status" in commands
    for command in commands:
        assert not segflow_imports(command) & steps_called_by_rules(), command


def test_the_import_reader_sees_every_form_of_import(tmp_path):
    """A planted step import is found whichever way it is written, even in a function."""
    (tmp_path / "train.py").write_text(
        "from segflow.predict import x\nimport segflow.oof_score\n"
        "def f():\n    from segflow import ensemble\n"
    )
    assert segflow_imports("train", tmp_path) == {"predict", "oof_score", "ensemble"}


def test_settings_carry_no_defaults_of_their_own():
    """Every default lives in the schema: the typed settings have none."""
    import dataclasses

    from segflow import settings

    for cls in vars(settings).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            with_default = [
                f.name
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING
            ]
            assert with_default == [], f"{cls.__name__} defaults {with_default}"


def step_declarations() -> dict[str, list[type]]:
    """Each rule step's declared arguments: the dataclasses of its module whose fields
    are all declared with segflow.step_cli.arg."""
    import importlib

    found = {}
    for step in sorted(steps_called_by_rules()):
        module = importlib.import_module(f"segflow.{step}")
        found[step] = [
            value
            for value in vars(module).values()
            if dataclasses.is_dataclass(value)
            and isinstance(value, type)
            and value.__module__ == module.__name__
            and dataclasses.fields(value)
            and all("help" in f.metadata for f in dataclasses.fields(value))
        ]
    return found


def test_step_command_lines_have_no_defaults_for_settings():
    """A step's declared arguments take settings as required values (or one JSON): a
    default may only say "absent" (None, off, empty, zero), never a value of its own
    that could disagree with the schema."""
    declarations = step_declarations()
    assert all(declarations.values()), declarations  # every step declares its CLI
    absent = (None, False, 0, frozenset())
    offenders = [
        (step, field.name, field.default)
        for step, classes in declarations.items()
        for cls in classes
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING
        and not any(
            field.default == a and type(field.default) is type(a) for a in absent
        )
    ]
    # submission check reads size and classes from --config: a path, not a setting;
    # train's resume cadence is the code's, not the config's.
    assert sorted(offenders) == [
        ("submission", "config", Path("config.yaml")),
        ("train", "resume_every_s", 60.0),
    ], offenders


def test_paths_of_results_are_spelled_once_in_the_helpers():
    """common.smk refers to rules' outputs, not to result paths of its own."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    spelled = re.findall(r'"results/[^"]*"', text)
    assert spelled == ['"results/wandb"'], spelled  # wandb's folder is no rule's output


def test_every_choice_the_code_knows_is_the_one_the_schema_allows():
    """Python lists of choices and the schema's enums name the same values in the same
    order: a value the schema lets through that the code does not handle (or the
    reverse) stops here, not in a job."""
    import yaml

    from segflow import (
        averaging,
        coco,
        ensemble,
        folds,
        images,
        label_noise,
        labels,
        losses,
        mixing,
        predict,
    )

    schema = yaml.safe_load(
        (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
    )
    top, model = schema["properties"], schema["$defs"]["model"]["properties"]
    pairs = {
        "data.on_error": (coco.ON_ERROR, top["data"]["properties"]["on_error"]),
        "data.unlabelled": (labels.UNLABELLED, top["data"]["properties"]["unlabelled"]),
        "data.exif": (images.EXIF_SETTINGS, top["data"]["properties"]["exif"]),
        "cv.method": (folds.METHODS, top["cv"]["properties"]["method"]),
        "ensemble.method": (ensemble.METHODS, top["ensemble"]["properties"]["method"]),
        "clean.action": (label_noise.ACTIONS, top["clean"]["properties"]["action"]),
        "averaging": (averaging.METHODS, model["averaging"]),
        "mix": (mixing.METHODS, model["mix"]),
        "tta": (predict.TTA_MODES, model["tta"]),
    }
    for key, (code, allowed) in pairs.items():
        assert list(code) == allowed["enum"], key
    assert list(losses.LOSS_NAMES) == list(model["loss"]["properties"])
