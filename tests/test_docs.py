"""The README and the docs tree tell the truth about how to run things."""

import json
import re
import shutil

import pytest

from conftest import REPO, snakemake, write_config

DOCS = REPO / "docs"


def readme() -> str:
    return (REPO / "README.md").read_text()


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def pages() -> dict[str, str]:
    """The README and every page of the docs tree, by path from the repository root."""
    found = {"README.md": readme()}
    for path in sorted(DOCS.glob("*.md")):
        found[f"docs/{path.name}"] = path.read_text()
    return found


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", readme(), flags=re.S)


def test_the_readme_is_a_front_page_and_links_every_page_of_the_docs():
    """Under 12 KB; the docs tree is reachable from it."""
    assert len(readme().encode()) < 12_000
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme()))
    assert linked == {f"docs/{p.name}" for p in DOCS.glob("*.md")}


def test_every_link_and_named_file_of_the_docs_exists():
    """Relative links, and the repository files a page names in backticks
    (tools/, benchmarks/, tests/, workflow/, profiles/, docs/)."""
    for name, text in pages().items():
        base = (REPO / name).parent
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (base / target).exists(), f"{name}: broken link {target}"
        for path in re.findall(
            r"`((?:tools|benchmarks|tests|workflow|profiles|docs)/[\w./-]+?)`", text
        ):
            if "*" not in path:
                assert (REPO / path).exists(), f"{name}: names missing {path}"


def test_every_step_a_page_runs_is_a_module_with_a_command_line():
    for name, text in pages().items():
        for module in set(re.findall(r"python -m segflow\.(\w+)", text)):
            source = REPO / "workflow" / "segflow" / f"{module}.py"
            assert source.exists(), f"{name}: no segflow.{module}"
            assert '__name__ == "__main__"' in source.read_text(), module


def test_the_config_reference_is_generated_from_the_current_schema():
    """docs/config.md equals what tools/config_reference.py writes, and names every
    key of every section of the schema."""
    import runpy

    import yaml

    tool = runpy.run_path(str(REPO / "tools" / "config_reference.py"))
    schema = yaml.safe_load(tool["SCHEMA"].read_text())
    assert doc("config.md") == tool["reference"](schema), (
        "docs/config.md is stale: run python tools/config_reference.py"
    )
    for section in schema["properties"]:
        assert f"## `{section}`" in doc("config.md")
    for key in schema["$defs"]["model"]["properties"]:
        assert f"| `defaults.{key}` |" in doc("config.md")


def test_ci_runs_the_readme_test_command():
    test_line = next(c for c in readme_commands() if "pytest" in c)
    assert test_line in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_main_job_builds_the_default_target():
    main_line = readme_commands()[0]
    assert main_line.endswith(".venv/bin/snakemake") and "pip install -e ." in main_line


def test_every_yaml_block_of_the_docs_is_a_valid_config_section():
    """The config examples of the README and the docs use keys and values the schema
    accepts."""
    import yaml

    from conftest import DEFAULT_CONFIG, deep_update
    from segflow.settings import validate_config

    blocks = [
        block
        for text in pages().values()
        for block in re.findall(r"```yaml\n(.*?)\n```", text, flags=re.S)
    ]
    assert len(blocks) >= 4
    for block in blocks:
        section = yaml.safe_load(block)
        config = deep_update(
            DEFAULT_CONFIG, {k: v for k, v in section.items() if k != "models"}
        )
        if "models" in section:
            config["models"] = section["models"]
        validate_config(config)


def test_every_case_of_the_robustness_page_names_an_existing_test():
    """docs/robustness.md promises what segflow handles; each row names its test."""
    page = (REPO / "docs" / "robustness.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", page))
    defined = set()
    for path in (REPO / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    assert len(named) >= 40 and named <= defined, sorted(named - defined)


def test_readme_wandb_sync_path_is_where_offline_runs_land():
    """wandb writes its runs into a wandb/ folder inside the directory it is given (see
    test_train's offline test); the README's sync command must name that folder."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    wandb_dir = re.search(r'^WANDB_DIR = "([^"]+)"', common, flags=re.M).group(1)
    assert f"`wandb sync {wandb_dir}/wandb/offline-run-*`" in doc("training.md")


def trained_epochs(printed: str) -> list[int]:
    """The epochs of each training job a `snakemake -n -p` printed."""
    settings = re.findall(r"segflow\.train --settings '(\{.*?\})'", printed)
    return [json.loads(s)["epochs"] for s in settings]


@pytest.mark.workflow
def test_readme_debug_one_liner_runs_the_debug_sample(tmp_path):
    """The README's one line runs debug mode: the index samples debug.images images per
    split and every model trains debug.epochs epochs; everything else is config.yaml's."""
    line = re.search(r"`snakemake (--configfile debug\.yaml) -- submission`", readme())
    assert line, "README: no debug one-liner"
    config = write_config(tmp_path)
    assert not config["debug"]["enabled"]
    shutil.copy(REPO / "debug.yaml", tmp_path / "debug.yaml")
    run = snakemake(tmp_path, "-n", "-p", *line.group(1).split(), "--", "submission")
    assert "--sample 16 " in run.stdout + run.stderr
    epochs = trained_epochs(run.stdout + run.stderr)
    assert epochs and set(epochs) == {1}
    # Without the overlay: the full data and the config's epochs.
    plain = snakemake(tmp_path, "-n", "-p", "--", "submission")
    assert "--sample 0 " in plain.stdout + plain.stderr
    epochs = trained_epochs(plain.stdout + plain.stderr)
    assert epochs and 1 not in epochs


@pytest.mark.workflow
def test_the_readme_gives_the_recovery_after_a_kill(tmp_path):
    """Snakemake killed with -9 leaves its lock; the README's steps (--unlock, then the
    same command with --rerun-incomplete) get the run going again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    assert "snakemake --unlock" in readme() and "--rerun-incomplete" in readme()
    write_config(tmp_path)
    target = "results/data/images.parquet"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["-d", str(tmp_path), "--cores", "1", target]
    run = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    locks = tmp_path / ".snakemake" / "locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())):
        assert run.poll() is None and time.monotonic() < deadline, "no lock taken"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    again = snakemake(
        tmp_path, "--cores", "1", "--rerun-incomplete", target, check=False
    )
    assert again.returncode != 0
    assert "cannot be locked" in again.stdout + again.stderr
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--cores", "1", "--rerun-incomplete", target)
    assert (tmp_path / target).is_file()
