"""Environment variable names: one module owns them, and the docs' table lists exactly those.

`aidp_metrics._env.VARIABLES` against the table of docs/configuration.md, both ways, and no
module of the package reading an `AIDP_*` / `MLFLOW_*` / `OCI_*` variable by a literal name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from aidp_metrics import _env as env

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"
SOURCES = sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "integrations").rglob("*.py")])
OURS = re.compile(r"^(AIDP|MLFLOW|OCI)_[A-Z0-9_]+$")
# Calls that read one variable by name: os.environ.get(NAME), os.getenv(NAME), env.get(NAME).
READERS = {"get", "getenv", "pop", "setdefault"}


def documented_variables() -> list[str]:
    """The names in the first column of the page's first table (up to its first `## `)."""
    section = PAGE.read_text(encoding="utf-8").split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = [name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])]
    assert names, "no variable table in docs/configuration.md"
    return names


def test_the_docs_list_exactly_the_variables_of_the_env_module() -> None:
    documented = documented_variables()
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    assert set(documented) - set(env.VARIABLES) == set(), "on the page, not in aidp_metrics._env"
    assert set(env.VARIABLES) - set(documented) == set(), "in aidp_metrics._env, not on the page"


def test_every_variable_has_a_constant_of_its_own_name_and_a_meaning() -> None:
    for name, meaning in env.VARIABLES.items():
        assert OURS.match(name), name
        assert getattr(env, name) == name
        assert meaning.strip(), name
    constants = {k for k, v in vars(env).items() if isinstance(v, str) and OURS.match(k)}
    assert constants == set(env.VARIABLES), "a constant not registered with _variable()"


def literal_reads(source: str, where: str) -> list[str]:
    """`where:line NAME` for each read of one of our variables spelled as a string literal."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr not in READERS or not node.args:
                continue
            key: ast.expr = node.args[0]
        elif isinstance(node, ast.Subscript):
            key = node.slice
        else:
            continue
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and OURS.match(key.value):
            found.append((node.lineno, key.value))
    return [f"{where}:{line} {name}" for line, name in sorted(found)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reads_a_variable_by_a_literal_name(path: Path) -> None:
    if path.name == "_env.py" and path.parent.name == "core":
        return
    where = str(path.relative_to(ROOT))
    assert literal_reads(path.read_text(encoding="utf-8"), where) == [], (
        "import the name from aidp_metrics._env"
    )


def test_the_literal_check_finds_reads_by_name() -> None:
    snippet = (
        "import os\n"
        'os.environ.get("AIDP_RUN_ID")\n'
        'env.get("OCI_CLI_AUTH", "")\n'
        'os.environ["MLFLOW_TRACKING_URI"]\n'
        'os.getenv("RANK")\n'  # not ours
        "os.environ.get(AIDP_RUN_ID)\n"  # a constant: fine
    )
    assert literal_reads(snippet, "x.py") == [
        "x.py:2 AIDP_RUN_ID",
        "x.py:3 OCI_CLI_AUTH",
        "x.py:4 MLFLOW_TRACKING_URI",
    ]


def test_first_env_takes_the_first_non_blank_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env.AIDP_RUN_ID, "   ")
    monkeypatch.setenv(env.MLFLOW_RUN_ID, " run-2 ")
    assert env.first_env(env.RUN_ID_VARIABLES) == "run-2"
    monkeypatch.setenv(env.AIDP_RUN_ID, "run-1")
    assert env.first_env(env.RUN_ID_VARIABLES) == "run-1"
    monkeypatch.delenv(env.AIDP_RUN_ID)
    monkeypatch.delenv(env.MLFLOW_RUN_ID)
    assert env.first_env(env.RUN_ID_VARIABLES) is None
