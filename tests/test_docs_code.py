"""Every Python block of README.md and docs/ runs against a real MLflow server, or is a fragment.

The blocks are found by pytest-examples (`find_examples`: the fenced blocks whose info string
starts with `py`). Two kinds, told apart by the info string:

- ```` ```python ````: a complete program. It runs as a script in a process of its own (no
  state shared between blocks: MLflow's and Accelerate's globals, Keras's backend), in an
  empty directory, against the session's MLflow server (`MLFLOW_TRACKING_URI`); it must exit
  0 and leave at least one new FINISHED run with metrics on the server.
- ```` ```{.python .fragment} ````: part of a program (it uses names it does not define). It
  must parse. MkDocs renders it as Python (the attribute list adds a CSS class).

Any other `py...` info string fails, so a misspelt marker cannot make a block silently skip.
A block included into a page from the README (`--8<-- "README.md:lightning"`) runs once, here
as part of the README. `test_the_harness_*` show each check failing on a broken block.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from pytest_examples import CodeExample, find_examples

from aidp_metrics import MetricsClient
from tests.support.mlflow_server import MLflowServer
from tests.support.scripts import child_env, run_script

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "README.md", ROOT / "docs")
COMPLETE = "python"
FRAGMENT = "{.python .fragment}"


def blocks(*sources: Path) -> list[CodeExample]:
    return list(find_examples(*sources))


def block_id(example: CodeExample) -> str:
    return f"{example.path.relative_to(ROOT)}:{example.start_line}"


def finished_runs_since(url: str, start_ms: int) -> set[str]:
    """Ids of the FINISHED runs with metrics that started at or after `start_ms`."""
    with MetricsClient(url) as client:
        found = client.request("POST", "experiments/search", body={"max_results": 50000})
        ids = [str(e["experiment_id"]) for e in found.get("experiments", [])]
        runs = client.search_runs(
            ids,
            f"attributes.status = 'FINISHED' and attributes.start_time >= {start_ms}",
            max_results=1000,
        )
    return {str(run["info"]["run_id"]) for run in runs if run.get("data", {}).get("metrics")}


def check_block(example: CodeExample, server: MLflowServer, workdir: Path) -> None:
    """Fail (AssertionError) unless the block is a fragment that parses or a complete program
    that runs and logs."""
    where = f"{example.path}:{example.start_line}"
    if example.prefix == FRAGMENT:
        try:
            ast.parse(example.source, where)
        except SyntaxError as exc:
            raise AssertionError(f"{where}: a fragment that is not Python: {exc}") from None
        return
    assert example.prefix == COMPLETE, (
        f"{where}: info string {example.prefix!r}: use ```python (runs) or ```{FRAGMENT}"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "block.py"
    script.write_text(example.source, encoding="utf-8")
    start_ms = int(time.time() * 1000)  # the server runs on this machine: one clock
    run_script([str(script)], child_env(server.url, workdir), workdir, label=where)
    assert finished_runs_since(server.url, start_ms), f"{where}: no FINISHED run with metrics"


def _ids(examples: Iterable[CodeExample]) -> list[str]:
    return [block_id(example) for example in examples]


DOC_BLOCKS = blocks(*SOURCES)


def test_the_docs_have_blocks_of_both_kinds() -> None:
    prefixes = {example.prefix for example in DOC_BLOCKS}
    assert {COMPLETE, FRAGMENT} <= prefixes
    readme = [e for e in DOC_BLOCKS if e.path.name == "README.md"]
    assert len([e for e in readme if e.prefix == COMPLETE]) >= 4  # one per framework


@pytest.mark.slow
@pytest.mark.parametrize("example", DOC_BLOCKS, ids=_ids(DOC_BLOCKS))
def test_block(example: CodeExample, mlflow_server: MLflowServer, tmp_path: Path) -> None:
    check_block(example, mlflow_server, tmp_path)


# -- the harness itself: each check fails on a broken block ----------------------------------

BROKEN = """\
# Broken blocks

```python
from aidp_metrics import Run

with Run.start(experiment_name="harness") as run:
    run.log_metric("loss", undefined_name)
```

```python
print("runs, but logs nothing")
```

```{.python .fragment}
model.fit(x, y
```

```{.python .fragmnt}
model.fit(x, y)
```

```python
from aidp_metrics import Run

with Run.start(experiment_name="harness") as run:
    run.log_metric("loss", 0.5, step=1)
```

```{.python .fragment}
model.fit(x, y)
```
"""


def test_the_harness_fails_each_broken_block(mlflow_server: MLflowServer, tmp_path: Path) -> None:
    page = tmp_path / "broken.md"
    page.write_text(BROKEN, encoding="utf-8")
    name_error, logs_nothing, bad_fragment, misspelt, good, good_fragment = blocks(page)
    expected = {
        "NameError: name 'undefined_name'": name_error,
        "no FINISHED run with metrics": logs_nothing,
        "a fragment that is not Python": bad_fragment,
        "info string '{.python .fragmnt}'": misspelt,
    }
    for message, example in expected.items():
        with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(".", r"\.")):
            check_block(example, mlflow_server, tmp_path / str(example.start_line))
    check_block(good, mlflow_server, tmp_path / "good")
    check_block(good_fragment, mlflow_server, tmp_path / "good-fragment")
