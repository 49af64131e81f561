"""The README stays honest: every tag is documented, and its commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

from lightning_landscape.tags import rows

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_tag() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [tag for tag, *_ in rows() if f"`{tag}`" not in readme]
    assert not missing, f"README tag table is stale; run `python -m lightning_landscape.tags --update README.md`: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "python -m pytest -n 2"
    assert f"```bash\n{command}\n```" in readme
    assert ci.strip().splitlines()[-1] == command
    assert "torch==2.13.0" in ci and ci.index("torch==2.13.0") < ci.index('-e ".[dev]"')
