"""The house's floors (pyproject.toml [tool.importlinter]) hold, and each contract fails when broken.

lint-imports runs on a copy of the packages with one import added on purpose; the copy shadows the
editable install because lint-imports runs in its directory (the current directory comes first on
sys.path).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["cli", "dashboard", "fleet", "federation", "accesspoint", "placement", "nameservice", "certs"]
LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                "sys.exit(c.main(args=['--no-cache'], standalone_mode=False))"]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LINT_IMPORTS, cwd=root, capture_output=True, text=True, timeout=120)


def tree_copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def add_line(path: Path, line: str) -> None:
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text, path
    path.write_text(text.replace(marker, marker + line + "\n", 1))


def test_the_repository_keeps_every_contract() -> None:
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    # a pure core that talks to the network
    ("accesspoint/meta.py", "import aiohttp  # noqa", "pure cores do no I/O"),
    # indirectly: a pure module that loads a DNS provider client (dnspython's query module, aiohttp)
    ("nameservice/plan.py", "import nameservice.providers.factory  # noqa", "pure cores do no I/O"),
    # the runtime importing the local fleet
    ("federation/kube.py", "import fleet.core  # noqa", "cli on top"),
    # anything importing the CLI
    ("fleet/l4.py", "import cli.common  # noqa", "cli on top"),
    # the dashboard reaching into the CLI (only the CLI imports the dashboard)
    ("dashboard/views.py", "import cli.common  # noqa", "cli on top"),
    # the runtime importing the dashboard
    ("federation/kube.py", "import dashboard.views  # noqa", "cli on top"),
    # a circle between two modules of one package
    ("accesspoint/meta.py", "import accesspoint.models  # noqa", "no import circle"),
])
def test_a_contract_broken_on_purpose_fails(tmp_path: Path, module: str, line: str, contract: str) -> None:
    root = tree_copy(tmp_path)
    add_line(root / module, line)
    result = lint(root)
    assert result.returncode != 0, result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken, result.stdout
