"""The README tells the truth about how to run things."""

import re

from conftest import REPO


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_line = next(c for c in readme_commands() if "pytest" in c)
    assert test_line in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_main_job_builds_the_default_target():
    main_line = readme_commands()[0]
    assert main_line.endswith(".venv/bin/snakemake") and "pip install -e ." in main_line
