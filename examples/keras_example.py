"""Train a small Keras 3 regressor and stream its metrics to AIDP MLOps or an MLflow server.

Configured only through the environment:

    KERAS_BACKEND          torch (default here), jax or tensorflow
    MLFLOW_TRACKING_URI    e.g. http://127.0.0.1:5000 -- or AIDP_INSTANCE_ID and
                           AIDP_WORKSPACE_KEY (+ OCI credentials) for AI Data Platform
    MLFLOW_EXPERIMENT_NAME / AIDP_EXPERIMENT_NAME   experiment (default "Default")
    AIDP_RUN_ID / MLFLOW_RUN_ID                     continue an existing run instead
    EPOCHS                 training epochs (default 5)

    KERAS_BACKEND=torch MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python examples/keras_example.py
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported

import keras
import numpy as np

from aidp_metrics.integrations.keras import AIDPCallback

WEIGHTS = np.random.default_rng(42).normal(size=(16, 1)).astype("float32")


def make_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, WEIGHTS.shape[0])).astype("float32")
    y = np.tanh(x @ WEIGHTS) + 0.1 * rng.normal(size=(samples, 1)).astype("float32")
    return x, y


def main() -> None:
    keras.utils.set_random_seed(0)
    x, y = make_data(2000, seed=0)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])

    # Epoch metrics (loss, mae, val_loss, val_mae, epoch) always; batch running means every
    # 10 optimizer steps. Leave log_every_n_steps out for epoch-level logging only.
    aidp = AIDPCallback(log_every_n_steps=10, run_name=f"keras-{keras.backend.backend()}")
    epochs = int(os.environ.get("EPOCHS", "5"))
    model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.2, callbacks=[aidp], verbose=2)

    # Logged as eval_loss / eval_mae at the final step of the same run.
    x_test, y_test = make_data(500, seed=1)
    model.evaluate(x_test, y_test, batch_size=128, callbacks=[aidp], verbose=0)
    print(f"logged to run {aidp.run_id}")


if __name__ == "__main__":
    main()
