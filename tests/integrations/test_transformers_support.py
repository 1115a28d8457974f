"""Tiny models, data and `TrainingArguments` for the transformers tests (no tests here).

Also imported by the subprocess scripts of those tests (with the repository on PYTHONPATH),
so it must not need pytest fixtures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

VOCAB = 64
LENGTH = 12


class RandomTokens(torch.utils.data.Dataset):  # type: ignore[misc]
    """`n` random token sequences; the label is the parity of the first token (learnable)."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[index],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[index],
        }


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


class TinyRegressor(torch.nn.Module):
    """A plain `nn.Module` returning `{"loss", "logits"}` like a transformers model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self.head(self.embed(input_ids).mean(dim=1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def training_args(output_dir: Path | str, **overrides: Any) -> TrainingArguments:
    """120 train samples, batch 4, 2 epochs = 60 steps; log every 5, eval every 20."""
    options: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 2,
        "learning_rate": 1e-3,
        "logging_steps": 5,
        "eval_strategy": "steps",
        "eval_steps": 20,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
    }
    options.update(overrides)
    return TrainingArguments(**options)


def make_trainer(
    output_dir: Path | str,
    callbacks: list[Any],
    *,
    model: torch.nn.Module | None = None,
    n_train: int = 120,
    **overrides: Any,
) -> Trainer:
    return Trainer(
        model=model if model is not None else tiny_bert(),
        args=training_args(output_dir, **overrides),
        train_dataset=RandomTokens(n_train, seed=1),
        eval_dataset=RandomTokens(32, seed=2),
        callbacks=callbacks,
    )


# -- reading back ----------------------------------------------------------------------


def expected_points(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """`{key: sorted [(step, value)]}` of every numeric `log_history` entry, once per point."""
    points: dict[str, set[tuple[int, float]]] = {}
    for entry in log_history:
        step = int(entry["step"])
        for key, value in entry.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            points.setdefault(key, set()).add((step, float(value)))
    return {key: sorted(values) for key, values in points.items()}


def points_of(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return sorted((int(m["step"]), _value(m["value"])) for m in history)


def _value(raw: Any) -> float:
    if isinstance(raw, str):
        return {"nan": math.nan, "infinity": math.inf, "-infinity": -math.inf}[raw.lower()]
    return float(raw)
