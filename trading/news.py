"""News scoring without I/O: ticker inference, the lexicon and fallback classifiers and `score_items`,
shared by the classifier agent and the backtester; the model sits behind the Classifier protocol.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opsinfra.errors import PipelineError
from schemas.records import MARKET_KEY, SENTIMENT_LABELS, NewsItem, ScoredNews

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Ticker inference

# Bare upper-case symbols that are also words or common abbreviations: a headline in capitals
# ("META-ANALYSIS", "IT SPENDING", "A DAY TO REMEMBER") must not tag them, so they count only as
# a cashtag or exchange-qualified ("NASDAQ: META"). One- and two-letter symbols are always so.
AMBIGUOUS_SYMBOLS = frozenset(
    "ALL AN ANY ARE BE BIG CAN CAR CASH CEO DAY EAT EV FAST FOR FUN GOOD HAS HOME IPO KEY LIFE "
    "LOVE LOW MAIN MAN META NEW NOW ONE OPEN OUT PEAK PLAY REAL RUN SAFE SEE TRUE TWO USA WELL "
    "WIN WORK YOU".split()
)

# When a named symbol is not in the universe but its twin is (GOOG/GOOGL share a company).
SYMBOL_TWINS = {"GOOG": "GOOGL", "GOOGL": "GOOG", "FB": "META"}


@dataclass(frozen=True, slots=True)
class Alias:
    """A company name that tags `ticker`, unless the words around it say it means something else.

    Names match case-sensitively as written or in capitals ("Apple", "APPLE"; never "apple"),
    on word boundaries. `not_before` is searched just before the name, `not_after` just after.
    """

    ticker: str
    names: tuple[str, ...]
    not_before: str | None = None
    not_after: str | None = None


ALIASES: tuple[Alias, ...] = (
    Alias(
        "AAPL",
        ("Apple",),
        not_before=r"\bbig\s+$",  # the Big Apple
        not_after=r"^(?:\s+|-)(?:pies?|juice|cider|orchards?|trees?|sauce|crumble|picking|growers?|"
        r"farmers?|harvest|varieties|seeds?|daily|martini)\b",
    ),
    Alias("MSFT", ("Microsoft",)),
    Alias(
        "TSLA",
        ("Tesla",),
        # a unit of magnetic flux ("a 3 Tesla MRI", "1.5-tesla"), the inventor, his coil
        not_before=r"(?:\d(?:[.,]\d+)?\s*-?\s*|\bnikola\s+)$",
        not_after=r"^(?:\s+|-)(?:coils?|units?|magnets?|scanners?)\b",
    ),
    Alias(
        "GOOGL",
        ("Alphabet", "Google"),
        not_before=r"\b(?:greek|latin|cyrillic|roman|phonetic|nato|english|hebrew|arabic)\s+$",
        not_after=r"^\s+(?:soup|song|letters?|blocks?)\b",
    ),
    Alias(
        "META",
        ("Meta", "Meta Platforms", "Facebook"),
        # Meta-analysis, meta description, meta tags, "the meta" of a game
        not_before=r"\bthe\s+$",
        not_after=r"^(?:\s*-|\s+(?:analys[ie]s|analytic|data|descriptions?|tags?|studies|study|"
        r"reviews?|games?)\b)",
    ),
    Alias(
        "AMZN",
        ("Amazon", "Amazon.com", "Amazon Web Services", "AWS"),
        not_before=r"\bthe\s+$",  # the Amazon (river, rainforest); the company takes no article
        not_after=r"^(?:\s+|-)(?:rain\s*forests?|rivers?|basin|jungles?|forests?|regions?|deltas?|"
        r"tribes?|biome|deforestation|fires?|warriors?|parrots?)\b",
    ),
    Alias("NVDA", ("Nvidia", "NVidia")),
)

_EXCHANGES = r"(?:NASDAQ|Nasdaq|NYSE|NYSEARCA|NYSE\s+Arca|AMEX|NYSEMKT|CBOE|BATS)"
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,5}(?:\.[A-Za-z])?)(?![\w])")
_QUALIFIED = re.compile(_EXCHANGES + r"\s*:\s*([A-Za-z]{1,5}(?:\.[A-Za-z])?)(?![\w])")


@dataclass(frozen=True, slots=True)
class _Matcher:
    ticker: str
    name: re.Pattern[str]
    not_before: re.Pattern[str] | None
    not_after: re.Pattern[str] | None


def _resolve(symbol: str, universe: frozenset[str]) -> str | None:
    symbol = symbol.upper()
    if symbol in universe:
        return symbol
    twin = SYMBOL_TWINS.get(symbol)
    return twin if twin in universe else None


@functools.lru_cache(maxsize=16)
def _compile(universe: frozenset[str]) -> tuple[re.Pattern[str] | None, tuple[_Matcher, ...]]:
    bare = sorted(s for s in universe if len(s) > 2 and s not in AMBIGUOUS_SYMBOLS)
    bare_re = (
        re.compile(r"(?<![\w$])(" + "|".join(map(re.escape, bare)) + r")(?![\w])") if bare else None
    )
    matchers = []
    for alias in ALIASES:
        ticker = _resolve(alias.ticker, universe)
        if ticker is None:
            continue
        variants = sorted({v for n in alias.names for v in (n, n.upper())}, key=len, reverse=True)
        name = re.compile(r"(?<![\w])(?:" + "|".join(map(re.escape, variants)) + r")(?![\w])")
        matchers.append(
            _Matcher(
                ticker,
                name,
                re.compile(alias.not_before, re.I) if alias.not_before else None,
                re.compile(alias.not_after, re.I) if alias.not_after else None,
            )
        )
    return bare_re, tuple(matchers)


def infer_tickers(text: str, universe: Iterable[str]) -> list[str]:
    """The universe's tickers `text` is about, in order of first mention, each once.

    Counted: cashtags ($AAPL, any case), exchange-qualified symbols ("NASDAQ: NVDA"), bare
    upper-case symbols unless ambiguous (see AMBIGUOUS_SYMBOLS), and company names and aliases
    (see ALIASES) unless their context says otherwise.
    """
    universe_set = frozenset(s.upper() for s in universe)
    bare_re, matchers = _compile(universe_set)
    found: list[tuple[int, str]] = []
    for pattern in (_CASHTAG, _QUALIFIED):
        for m in pattern.finditer(text):
            ticker = _resolve(m.group(1), universe_set)
            if ticker is not None:
                found.append((m.start(), ticker))
    if bare_re is not None:
        found.extend((m.start(), m.group(1)) for m in bare_re.finditer(text))
    for matcher in matchers:
        for m in matcher.name.finditer(text):
            before = text[max(0, m.start() - 40) : m.start()]
            after = text[m.end() : m.end() + 40]
            if matcher.not_before is not None and matcher.not_before.search(before):
                continue
            if matcher.not_after is not None and matcher.not_after.search(after):
                continue
            found.append((m.start(), matcher.ticker))
    seen: dict[str, None] = {}
    for _, ticker in sorted(found):
        seen.setdefault(ticker, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------
# Sentiment


class ModelUnavailable(PipelineError):
    """The sentiment model could not be loaded (no network, no local copy, unusable labels)."""


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: str  # positive, negative or neutral
    score: float  # the classifier's confidence in `label`, 0..1
    model: str  # which classifier produced it


class Classifier(Protocol):
    """Scores texts; one Sentiment per text, in order."""

    def classify(self, texts: list[str]) -> list[Sentiment]: ...


_LABEL_SYNONYMS = {"pos": "positive", "neg": "negative", "neu": "neutral"}


def normalize_label(label: str) -> str | None:
    """A model's label as positive/negative/neutral (case-insensitive), or None if unknown."""
    low = label.strip().lower()
    low = _LABEL_SYNONYMS.get(low, low)
    return low if low in SENTIMENT_LABELS else None


class LexiconClassifier:
    """VADER (vaderSentiment), a lexicon and rules: no model, no network, ~thousands/s per core.

    compound >= +0.05 is positive, <= -0.05 negative, else neutral (VADER's own published
    thresholds). The score is |compound| for positive/negative and 1 - |compound| for neutral.
    """

    name = "lexicon:vader"
    POSITIVE = 0.05
    NEGATIVE = -0.05

    def __init__(self) -> None:
        self._analyzer: Any = None
        self._lock = threading.Lock()

    def classify(self, texts: list[str]) -> list[Sentiment]:
        with self._lock:
            if self._analyzer is None:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

                self._analyzer = SentimentIntensityAnalyzer()
        return [self.label(self._analyzer.polarity_scores(t)["compound"]) for t in texts]

    @classmethod
    def label(cls, compound: float) -> Sentiment:
        if compound >= cls.POSITIVE:
            return Sentiment("positive", abs(compound), cls.name)
        if compound <= cls.NEGATIVE:
            return Sentiment("negative", abs(compound), cls.name)
        return Sentiment("neutral", 1.0 - abs(compound), cls.name)


class FallbackClassifier:
    """The model when it loads, else the lexicon, with one warning saying so.

    A batch the loaded model fails on is scored by the lexicon too (and logged), so no item is
    ever dropped for want of a score; each Sentiment names the classifier that produced it.
    """

    def __init__(self, primary: Classifier, fallback: Classifier) -> None:
        self.primary = primary
        self.fallback = fallback
        self.using_fallback = False

    def classify(self, texts: list[str]) -> list[Sentiment]:
        if not self.using_fallback:
            try:
                return self.primary.classify(texts)
            except ModelUnavailable as exc:
                self.using_fallback = True
                log.warning(
                    "sentiment model %r unavailable (%s); scoring with the lexicon fallback "
                    "(records say model=%r)",
                    getattr(self.primary, "name", type(self.primary).__name__),
                    exc,
                    getattr(self.fallback, "name", type(self.fallback).__name__),
                )
            except Exception:
                log.exception(
                    "sentiment model %r failed on a batch of %d; that batch is scored by the "
                    "lexicon fallback",
                    getattr(self.primary, "name", type(self.primary).__name__),
                    len(texts),
                )
        return self.fallback.classify(texts)


def news_text(item: NewsItem) -> str:
    """What is classified and searched for tickers: the title, then the summary."""
    title, summary = item.title.strip(), item.summary.strip()
    if not summary or summary.startswith(title):
        return summary or title
    return f"{title}\n{summary}" if title else summary


def score_batch(
    items: Sequence[NewsItem], classifier: Classifier, universe: Iterable[str]
) -> list[list[ScoredNews]]:
    """`score_items`, grouped per input item (one classifier call for the whole batch)."""
    if not items:
        return []
    universe = tuple(universe)
    texts = [news_text(i) for i in items]
    sentiments = classifier.classify(texts)
    if len(sentiments) != len(items):
        raise ValueError(f"classifier returned {len(sentiments)} results for {len(items)} texts")
    out = []
    for item, text, s in zip(items, texts, sentiments, strict=True):
        tickers = infer_tickers(text, universe)
        out.append(
            [
                ScoredNews(
                    id=item.id,
                    ticker=ticker,
                    tickers=list(tickers),
                    label=s.label,
                    score=s.score,
                    model=s.model,
                    published=item.published,
                )
                for ticker in tickers or [MARKET_KEY]
            ]
        )
    return out


def score_items(
    items: Sequence[NewsItem], classifier: Classifier, universe: Iterable[str]
) -> list[ScoredNews]:
    """One ScoredNews per (item, inferred ticker), or one keyed `_market` if it names none."""
    return [rec for group in score_batch(items, classifier, universe) for rec in group]
