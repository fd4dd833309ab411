"""Classifiers and score_items: a tiny BERT built here through the real transformers path, the
VADER fallback and its thresholds, the fallback switch, and the news.scored contract."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.sentiment_model import TransformersClassifier
from schemas.records import MARKET_KEY, NewsItem
from trading.news import (
    FallbackClassifier,
    LexiconClassifier,
    ModelUnavailable,
    Sentiment,
    news_text,
    normalize_label,
    score_batch,
    score_items,
)

TS = datetime(2025, 6, 10, 14, 0, tzinfo=UTC)
WORDS = (
    "apple tesla nvidia microsoft shares stock surge jump rally record profit beat fall "
    "drop loss recall crash miss lawsuit the a of to and on in after over for with is"
).split()
UNIVERSE = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA")


def build_tiny_model(
    path: Path,
    id2label: dict[int, str] | None = None,
    *,
    max_positions: int = 64,
    seed: int = 0,
    always: int | None = None,
) -> Path:
    """A random-weight BERT sequence classifier with a local vocab, saved like a hub model; with
    `always`, its head answers that class id for every text."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    id2label = id2label or {0: "positive", 1: "negative", 2: "neutral"}
    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_positions,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = BertForSequenceClassification(config)
    if always is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            model.classifier.bias[always] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def item(n: int, title: str, summary: str = "") -> NewsItem:
    return NewsItem(f"id-{n}", "feed", title, summary, None, TS, TS)


class Recording:
    """A fixed-answer classifier that records the batches it was given."""

    def __init__(self, label: str = "neutral", model: str = "fixed") -> None:
        self.batches: list[list[str]] = []
        self.answer = Sentiment(label, 0.5, model)

    def classify(self, texts: list[str]) -> list[Sentiment]:
        self.batches.append(list(texts))
        return [self.answer for _ in texts]


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("positive", "positive"),
        ("Negative", "negative"),
        ("NEUTRAL", "neutral"),
        (" pos ", "positive"),
        ("neg", "negative"),
        ("LABEL_0", None),
        ("joy", None),
    ],
)
def test_normalize_label(label: str, expected: str | None) -> None:
    assert normalize_label(label) == expected


def test_tiny_model_loads_lazily_once_and_classifies_in_batches(tiny_model: Path) -> None:
    clf = TransformersClassifier(str(tiny_model), batch_size=4)
    assert clf._pipe is None  # constructing loads nothing
    texts = [f"apple shares surge {n}" for n in range(10)] + ["tesla crash " * 200, ""]
    out = clf.classify(texts)
    pipe = clf._pipe
    assert pipe is not None
    assert len(out) == len(texts)
    assert {s.label for s in out} <= {"positive", "negative", "neutral"}
    assert all(0.0 <= s.score <= 1.0 and s.model == str(tiny_model) for s in out)
    assert clf.max_length == 64  # the model's position limit wins over 512: long text truncated
    again = clf.classify(texts[:3])
    assert clf._pipe is pipe  # loaded once
    assert again == out[:3]  # deterministic: same text, same score, in or out of a batch


@pytest.mark.parametrize(
    ("id2label", "always", "expected"),
    [
        ({0: "Positive", 1: "NEGATIVE", 2: "Neutral"}, 0, "positive"),
        ({0: "Positive", 1: "NEGATIVE", 2: "Neutral"}, 1, "negative"),
        ({0: "Positive", 1: "NEGATIVE", 2: "Neutral"}, 2, "neutral"),
        ({0: "neutral", 1: "pos", 2: "neg"}, 2, "negative"),  # another model's order
        ({0: "neutral", 1: "pos", 2: "neg"}, 1, "positive"),
    ],
)
def test_model_labels_map_case_insensitively(
    tmp_path: Path, id2label: dict[int, str], always: int, expected: str
) -> None:
    """Each class id comes out as its own label, whatever the model's order and spelling."""
    path = build_tiny_model(tmp_path / "m", id2label, always=always)
    out = TransformersClassifier(str(path)).classify(["apple surge", "tesla crash", ""])
    assert [s.label for s in out] == [expected] * 3
    assert all(s.score > 0.99 for s in out)


def test_a_model_without_sentiment_labels_is_unavailable(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m", {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ModelUnavailable, match="LABEL_0"):
        TransformersClassifier(str(path)).classify(["x"])


def test_a_missing_model_fails_once_and_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clf = TransformersClassifier(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelUnavailable) as first:
        clf.classify(["x"])
    calls: list[int] = []
    monkeypatch.setattr(clf, "_build", lambda: calls.append(1))
    with pytest.raises(ModelUnavailable) as second:
        clf.classify(["y"])
    assert second.value is first.value and calls == []


@pytest.mark.parametrize(
    ("compound", "label", "score"),
    [
        (0.05, "positive", 0.05),
        (0.9, "positive", 0.9),
        (0.0499, "neutral", 0.9501),
        (0.0, "neutral", 1.0),
        (-0.0499, "neutral", 0.9501),
        (-0.05, "negative", 0.05),
        (-0.7, "negative", 0.7),
    ],
)
def test_lexicon_thresholds(compound: float, label: str, score: float) -> None:
    s = LexiconClassifier.label(compound)
    assert (s.label, s.model) == (label, "lexicon:vader")
    assert s.score == pytest.approx(score)


def test_lexicon_scores_headlines() -> None:
    out = LexiconClassifier().classify(
        [
            "Apple shares surge on record profit",
            "Tesla recall after deadly crash",
            "Microsoft to report earnings on Tuesday",
        ]
    )
    assert [s.label for s in out] == ["positive", "negative", "neutral"]


def test_fallback_warns_once_and_scores_every_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clf = FallbackClassifier(TransformersClassifier(str(tmp_path / "absent")), LexiconClassifier())
    with caplog.at_level(logging.WARNING, logger="trading.news"):
        first = clf.classify(["Apple shares surge", "Tesla crash"])
        second = clf.classify(["Nvidia beats", "Amazon misses", "Flat day"])
    assert len(first) == 2 and len(second) == 3
    assert {s.model for s in first + second} == {"lexicon:vader"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "absent" in warnings[0].getMessage() and "lexicon" in warnings[0].getMessage()


def test_fallback_uses_the_model_when_it_loads(tiny_model: Path) -> None:
    clf = FallbackClassifier(TransformersClassifier(str(tiny_model)), LexiconClassifier())
    assert {s.model for s in clf.classify(["apple surge"])} == {str(tiny_model)}
    assert not clf.using_fallback


def test_a_batch_the_model_fails_on_is_scored_by_the_fallback(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = TransformersClassifier(str(tiny_model))
    model.load()

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("inference failed")

    monkeypatch.setattr(model, "_pipe", boom)
    clf = FallbackClassifier(model, LexiconClassifier())
    with caplog.at_level(logging.ERROR, logger="trading.news"):
        out = clf.classify(["Apple shares surge"])
    assert [s.model for s in out] == ["lexicon:vader"]
    assert not clf.using_fallback  # the model stays in use for the next batch
    assert "failed on a batch" in caplog.text


def test_score_items_contract() -> None:
    items = [
        item(1, "Apple and $NVDA rally", "Microsoft flat"),
        item(2, "Markets close mixed"),
        item(3, "Grandma's apple pie"),
    ]
    clf = Recording("positive", "fixed-model")
    out = score_items(items, clf, UNIVERSE)
    assert len(clf.batches) == 1 and len(clf.batches[0]) == 3  # one call per batch
    assert [(r.id, r.ticker, r.key()) for r in out] == [
        ("id-1", "AAPL", "AAPL"),
        ("id-1", "NVDA", "NVDA"),
        ("id-1", "MSFT", "MSFT"),
        ("id-2", MARKET_KEY, MARKET_KEY),
        ("id-3", MARKET_KEY, MARKET_KEY),
    ]
    assert out[0].tickers == ["AAPL", "NVDA", "MSFT"] and out[3].tickers == []
    assert all(r.label == "positive" and r.model == "fixed-model" for r in out)
    assert all(r.published == TS for r in out)
    assert score_items([], clf, UNIVERSE) == [] and len(clf.batches) == 1
    groups = score_batch(items, clf, UNIVERSE)
    assert [len(g) for g in groups] == [3, 1, 1]


def test_score_items_refuses_a_classifier_that_loses_texts() -> None:
    class Short:
        def classify(self, texts: list[str]) -> list[Sentiment]:
            return []

    with pytest.raises(ValueError, match="0 results for 1"):
        score_items([item(1, "x")], Short(), UNIVERSE)


@pytest.mark.parametrize(
    ("title", "summary", "text"),
    [
        ("Title", "", "Title"),
        ("", "Summary only", "Summary only"),
        ("Title", "Title and more", "Title and more"),  # a summary that repeats the title
        ("Title", "Body", "Title\nBody"),
    ],
)
def test_news_text(title: str, summary: str, text: str) -> None:
    assert news_text(item(0, title, summary)) == text


def test_classifier_config_from_settings_picks_up_optional_fields() -> None:
    from types import SimpleNamespace

    from opsinfra.settings import Settings
    from streams.classifier import ClassifierConfig

    base = Settings(_env_file=None, sentiment_model="/models/finbert",  # type: ignore[call-arg]
                    pipeline_symbols=("aapl", "msft"))
    conf = ClassifierConfig.from_settings(base)
    assert (conf.model, conf.universe, conf.batch_size, conf.torch_threads) == (
        "/models/finbert", ("AAPL", "MSFT"), 16, 1)
    extended = SimpleNamespace(sentiment_model="m", pipeline_symbols=("NVDA",),
                               classifier_batch_size=64, torch_num_threads=2)
    conf = ClassifierConfig.from_settings(extended, batch_within_s=0.1)  # type: ignore[arg-type]
    assert (conf.batch_size, conf.torch_threads, conf.batch_within_s) == (64, 2, 0.1)
