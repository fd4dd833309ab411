"""The sentiment model (FinBERT by default): a transformers pipeline loaded from the hub or a local
directory on first use, once, behind the pure Classifier protocol of trading.news.
"""

from __future__ import annotations

import threading
from typing import Any

from trading.news import ModelUnavailable, Sentiment, normalize_label


class TransformersClassifier:
    """A transformers text-classification pipeline, loaded on first use, once.

    A failed load is remembered and raised again as ModelUnavailable without retrying, so a
    missing model costs one attempt per process, not one per batch.
    """

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        torch_threads: int | None = None,
        max_length: int = 512,
    ) -> None:
        self.name = model
        self.batch_size = batch_size
        self.torch_threads = torch_threads
        self.max_length = max_length
        self._lock = threading.Lock()
        self._pipe: Any = None
        self._labels: dict[str, str] = {}
        self._error: ModelUnavailable | None = None

    def load(self) -> None:
        with self._lock:
            if self._pipe is not None:
                return
            if self._error is not None:
                raise self._error
            try:
                self._pipe, self._labels = self._build()
            except ModelUnavailable as exc:
                self._error = exc
                raise
            except Exception as exc:  # transformers raises OSError, ValueError, RuntimeError...
                self._error = ModelUnavailable(f"cannot load {self.name!r}: {exc}")
                self._error.__cause__ = exc
                raise self._error from exc

    def _build(self) -> tuple[Any, dict[str, str]]:
        import torch
        from transformers import pipeline

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        pipe = pipeline("text-classification", model=self.name, device="cpu")
        id2label = pipe.model.config.id2label or {}
        labels = {str(v): normalize_label(str(v)) for v in id2label.values()}
        unknown = sorted(k for k, v in labels.items() if v is None)
        if unknown:
            raise ModelUnavailable(f"{self.name!r} has labels {unknown} that are not sentiments")
        limits = [self.max_length, getattr(pipe.model.config, "max_position_embeddings", None)]
        tok_max = getattr(pipe.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 1_000_000:
            limits.append(tok_max)
        self.max_length = min(x for x in limits if isinstance(x, int))
        return pipe, {k: v for k, v in labels.items() if v is not None}

    def classify(self, texts: list[str]) -> list[Sentiment]:
        if not texts:
            return []
        self.load()
        out = self._pipe(
            [t if t.strip() else "." for t in texts],
            batch_size=self.batch_size,
            truncation=True,
            max_length=self.max_length,
        )
        return [Sentiment(self._labels[r["label"]], float(r["score"]), self.name) for r in out]
