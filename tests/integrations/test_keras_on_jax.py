"""tests/integrations/test_keras.py again with Keras on JAX, the second backend CI covers.

Keras binds its backend when it is first imported, and the test process runs Keras on
torch; so the same module runs in a child pytest with `KERAS_BACKEND=jax` (its own MLflow
server). Inside the suite, the child shares the xdist workers with every other test rather
than running after the suite. Every test must pass, except the one that needs torch.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.support.subsuite import run_modules

pytestmark = [pytest.mark.keras, pytest.mark.slow]

MODULE = "tests/integrations/test_keras.py"
# skipped off torch (it reads RANK when torch.distributed is not up)
TORCH_ONLY = {f"{MODULE}::test_rank_from_environment"}


def test_keras_module_passes_on_the_jax_backend(tmp_path: Path) -> None:
    for package in ("jax", "keras"):
        if importlib.util.find_spec(package) is None:  # importing it here would cost seconds
            pytest.skip(f"{package} is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIDP_", "MLFLOW_"))}
    env["KERAS_BACKEND"] = "jax"
    outcomes, result = run_modules([MODULE], env, tmp_path / "junit.xml")
    not_passed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert not_passed == dict.fromkeys(TORCH_ONLY, "skipped"), result.stdout[-8000:]
    assert result.returncode == 0, result.stdout[-8000:]
    assert len(outcomes) > len(TORCH_ONLY), sorted(outcomes)
