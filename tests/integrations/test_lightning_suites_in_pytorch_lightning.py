"""The ported Lightning logger suites again, in the `pytorch_lightning` namespace.

test_lightning_contract.py (Lightning's test_all.py), test_lightning_logger_suite.py
(test_logger.py) and test_lightning_mlflow_suite.py (test_mlflow.py) run in the test process
with `lightning.pytorch`. Importing `pytorch_lightning` there would change what every later
test sees (the bases `aidp_metrics.integrations.lightning.AIDPLogger` gets, where Lightning's
log messages go), so one pytest subprocess runs the three modules with `pytorch_lightning`'s
Trainer, demos and loggers and `aidp_metrics.integrations.pytorch_lightning.AIDPLogger`
(tests/integrations/lightning_namespace.py), against this process's MLflow server. Every
test there must pass: a skip (say, `pytorch_lightning` missing) counts as a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.subsuite import run_modules

pytestmark = pytest.mark.lightning

SUITES = (
    "tests/integrations/test_lightning_contract.py",
    "tests/integrations/test_lightning_logger_suite.py",
    "tests/integrations/test_lightning_mlflow_suite.py",
)
# the names tests/integrations/lightning_namespace.py reads (not imported: it imports Lightning)
NAMESPACE_VARIABLE = "AIDP_TEST_LIGHTNING_NAMESPACE"
SERVER_VARIABLE = "AIDP_TEST_MLFLOW_URL"


@pytest.mark.slow
def test_ported_lightning_logger_suites_pass_in_the_pytorch_lightning_namespace(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("pytorch_lightning")
    url = os.environ.get(SERVER_VARIABLE)  # a server of one's own while working on the suites
    if not url:
        server = request.getfixturevalue("mlflow_server")
        server.start()
        url = server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIDP_", "MLFLOW_"))}
    env[NAMESPACE_VARIABLE] = "pytorch_lightning"
    env[SERVER_VARIABLE] = url
    outcomes, result = run_modules(SUITES, env, tmp_path / "junit.xml")
    not_passed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert not_passed == {}, result.stdout[-8000:]
    assert result.returncode == 0, result.stdout[-8000:]
    for suite in SUITES:
        assert any(name.startswith(f"{suite}::") for name in outcomes), (suite, sorted(outcomes))
