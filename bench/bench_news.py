"""Headlines per second through `score_batch` (classify + ticker inference), as the classifier
agent calls it: a tiny random BERT built here (or --model PATH, e.g. a local FinBERT copy) and
the VADER lexicon fallback, at batch sizes 1, 16 and 64.

Run: python bench/bench_news.py [--headlines N] [--model PATH] [--threads T ...]. Prints figures.
torch threads matter: on a shared 2-core host, 2 threads spin against the other stages.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from connectors.sentiment_model import TransformersClassifier
from opsinfra.settings import DEFAULT_SYMBOLS
from schemas.records import NewsItem
from trading.news import Classifier, LexiconClassifier, infer_tickers, score_batch

SUBJECTS = ["Apple", "Microsoft", "Tesla", "Alphabet", "Google", "Amazon", "Meta", "Nvidia",
            "$AAPL", "$NVDA", "Regulators", "Investors", "Chip makers", "Retailers", "Banks"]
VERBS = ["shares surge after", "slump on", "rally despite", "face probe over", "beat estimates on",
         "cut guidance after", "announce buyback amid", "recall products after", "hire for"]
OBJECTS = ["record profit", "weak demand", "an antitrust lawsuit", "AI data-centre deals",
           "supply-chain delays", "strong iPhone sales", "a crash", "a merger", "higher rates"]
WORDS = sorted({w.lower().strip("$") for s in SUBJECTS + VERBS + OBJECTS for w in s.split()})


def headlines(n: int, seed: int = 7) -> list[NewsItem]:
    rng = random.Random(seed)
    ts = datetime(2025, 6, 10, 14, tzinfo=UTC)
    out = []
    for i in range(n):
        title = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        summary = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))
        out.append(NewsItem(f"b-{i}", "bench", title, summary, None, ts, ts))
    return out


def build_tiny_model(path: Path) -> Path:
    """The same shape of model the tests build: random weights, a local vocab, 3 labels."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    id2label = {0: "positive", 1: "negative", 2: "neutral"}
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    BertForSequenceClassification(config).save_pretrained(path)
    BertTokenizer(str(vocab)).save_pretrained(path)
    return path


def rate(run: Callable[[], None], n: int, repeat: int = 3) -> float:
    """Best of `repeat` runs, items per second (the machine is shared: the best is the truth)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n / best


def bench_tickers(items: list[NewsItem]) -> None:
    texts = [f"{i.title}\n{i.summary}" for i in items]
    infer_tickers(texts[0], DEFAULT_SYMBOLS)

    def run() -> None:
        for text in texts:
            infer_tickers(text, DEFAULT_SYMBOLS)

    print(f"{'ticker inference alone':<32}           {rate(run, len(texts)):>10,.0f} headlines/s")


def bench(name: str, make: Callable[[int], Classifier], items: list[NewsItem]) -> None:
    for batch in (1, 16, 64):
        clf = make(batch)
        score_batch(items[:batch], clf, DEFAULT_SYMBOLS)  # load + warm up outside the timing

        def run(clf: Classifier = clf, batch: int = batch) -> None:
            for start in range(0, len(items), batch):
                score_batch(items[start : start + batch], clf, DEFAULT_SYMBOLS)

        print(f"{name:<32} batch {batch:>3}: {rate(run, len(items)):>10,.0f} headlines/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--headlines", type=int, default=512)
    parser.add_argument("--model", help="a local model directory instead of the tiny one")
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="torch thread counts to try (default: 1 and torch's default)")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep the figures readable
    items = headlines(args.headlines)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_model(Path(tmp)))
        label = "model " + ("(tiny BERT)" if args.model is None else Path(model).name)
        print(f"{len(items)} headlines, title + 10-40 word summary; score_batch = classify + "
              "ticker inference")
        import torch

        for threads in args.threads or sorted({1, torch.get_num_threads()}):

            def make(batch: int, threads: int = threads) -> Classifier:
                return TransformersClassifier(model, batch_size=batch, torch_threads=threads)

            bench(f"{label}, {threads} thr", make, items)
    bench("fallback (lexicon:vader)", lambda _b: LexiconClassifier(), items)
    bench_tickers(items)


if __name__ == "__main__":
    main()
