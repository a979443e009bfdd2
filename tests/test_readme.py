"""README.md opens with the two fresh-machine commands, and CI runs the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n# \d\..*\n(.*)\n```", readme)[:2]


def test_readme_opens_with_run_and_test_commands():
    run_cmd, test_cmd = _commands()
    assert "pip install" in run_cmd and "flwr run ." in run_cmd
    assert "pip install" in test_cmd and "pytest" in test_cmd


def test_ci_runs_the_readme_test_command_exactly():
    _, test_cmd = _commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines
