"""CI runs exactly the README's test command: `.ci/run`'s last command is the README's second one."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command():
    main_job, test_command = readme_commands()
    assert "hyperbench bench" in main_job
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    assert ci[-1] == test_command, (ci, test_command)
    assert (ROOT / test_command.split()[0]).stat().st_mode & 0o111  # executable as written
