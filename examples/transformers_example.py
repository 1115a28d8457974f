"""Fine-tune a small BERT classifier with the Hugging Face `Trainer` and stream its metrics
to AIDP MLOps or an MLflow server.

Configured only through the environment:

    MLFLOW_TRACKING_URI    e.g. http://127.0.0.1:5000 -- or AIDP_INSTANCE_ID and
                           AIDP_WORKSPACE_KEY (+ OCI credentials) for AI Data Platform
    MLFLOW_EXPERIMENT_NAME / AIDP_EXPERIMENT_NAME   experiment (default "Default")
    AIDP_RUN_ID / MLFLOW_RUN_ID                     continue an existing run instead
    EPOCHS                 training epochs (default 3)
    OUTPUT_DIR             checkpoints (default ./transformers-example); running the script
                           again resumes from the last checkpoint, into the same run

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python examples/transformers_example.py

The model is built from a config (no download) and the task is synthetic: is the first
token of a sequence even? Swap in your own model and datasets; the callback stays the same.
"""

from __future__ import annotations

import os

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from aidp_metrics.integrations.transformers import AIDPCallback

VOCAB, LENGTH = 128, 16


class ParityTask(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": (ids[0] % 2).long(),
        }


def main() -> None:
    output_dir = os.environ.get("OUTPUT_DIR", "transformers-example")
    ids = torch.randint(1, VOCAB, (1200, LENGTH), generator=torch.Generator().manual_seed(0))
    train, val = ParityTask(ids[:1000]), ParityTask(ids[1000:])

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)

    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=int(os.environ.get("EPOCHS", "3")),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=5e-4,
        warmup_steps=10,
        logging_steps=5,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        report_to="none",  # AIDPCallback does the logging; keep MLflowCallback & co out
        use_cpu=not torch.cuda.is_available(),
    )
    callback = AIDPCallback()
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[callback]
    )
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    trainer.train(resume_from_checkpoint=last)
    metrics = trainer.evaluate()  # logged into the same run, at the last step
    print(f"run {callback.run_id}: eval_loss {metrics['eval_loss']:.4f}")


if __name__ == "__main__":
    main()
