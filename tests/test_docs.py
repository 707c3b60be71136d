"""The README tells the truth about how to run things."""

import re

from conftest import REPO


def readme_commands() -> list[str]:
    return re.findall(
        r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S
    )


def test_ci_runs_the_readme_test_command():
    test_line = next(c for c in readme_commands() if "pytest" in c)
    assert test_line in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_main_job_builds_the_default_target():
    main_line = readme_commands()[0]
    assert main_line.endswith(".venv/bin/snakemake") and "pip install -e ." in main_line


def test_every_yaml_block_of_the_readme_is_a_valid_config_section():
    """The README's config examples use keys and values the schema accepts."""
    import yaml

    from conftest import DEFAULT_CONFIG, deep_update
    from segflow.settings import validate_config

    blocks = re.findall(
        r"```yaml\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S
    )
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
