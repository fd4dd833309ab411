"""The dispatch stage's connections to Alpaca: one per key pair (accounts naming their own
credentials_file and trading_url get their own), each with its orders client, its one trade_updates
stream and its snapshot reader, which publishes the broker's state for the desks to consume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.alpaca_trading import AlpacaOrders, TradeUpdates
from connectors.credentials import CredentialSource
from opsinfra.settings import Settings
from schemas.records import Record
from schemas.topics import BROKER_ACCOUNTS, BROKER_POSITIONS, OPTION_QUOTES, TopicSpec
from trading.gates import AccountConfig
from trading.options import parse_occ

log = logging.getLogger(__name__)

Send = Callable[[TopicSpec, Record], Awaitable[Awaitable[Any]]]


@dataclass
class KeyPair:
    """One Alpaca key pair and what runs on it: the accounts that share it, orders, trade updates
    and the snapshot reader (BrokerSession)."""

    label: str  # for logs: the credentials' source, never a value
    credentials: CredentialSource
    url: str | None
    accounts: list[str] = field(default_factory=list)
    orders: AlpacaOrders | None = None
    session: Any = None  # connectors.alpaca_broker.BrokerSession
    updates: TradeUpdates | None = None
    snapshot_due: float = 0.0  # monotonic time of a snapshot asked for by a trade update
    due_trigger: str = "trade_update"


def key_pairs(accounts: Sequence[AccountConfig], settings: Settings, *, default_url: str | None,
              timeout_s: float) -> dict[str, KeyPair]:
    """The key pairs the alpaca-paper accounts use, by label; one connection each."""
    pairs: dict[str, KeyPair] = {}
    for account in accounts:
        if account.mode != "alpaca-paper":
            continue
        url = account.trading_url or default_url
        if account.credentials_file:
            source = CredentialSource(file=Path(account.credentials_file), key_id=None, secret_key=None)
            label = f"file {account.credentials_file}"
        else:
            source = CredentialSource.from_settings(settings)
            label = "global keys"
        label = f"{label} @ {url or 'paper'}"
        pair = pairs.get(label)
        if pair is None:
            pair = pairs[label] = KeyPair(label, source, url)
            pair.orders = AlpacaOrders(source, url=url, timeout_s=timeout_s)
        pair.accounts.append(account.name)
    return pairs


class BrokerLink:
    """Publishes each account's broker state (account, every position, open orders) at start, on a
    timer, after trade updates, and option quotes of held contracts once a minute."""

    def __init__(self, pairs: dict[str, KeyPair], send: Send, *, data_url: str | None,
                 timeout_s: float, pipeline_symbols: Callable[[str], set[str]],
                 open_symbols: Callable[[str], set[str]] = lambda _name: set(),
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.pairs = pairs
        self.now = now  # the dispatch stage's clock: a snapshot is stamped on the desks' time
        self.send = send
        self.data_url = data_url
        self.timeout_s = timeout_s
        self.pipeline_symbols = pipeline_symbols  # the desk's positions, pending ones included
        self.open_symbols = open_symbols  # the desk's filled, open positions
        self.snapshots = 0
        self.failures = 0
        self._held_options: dict[str, set[str]] = {}  # account -> option contracts held
        self._last_quotes = 0.0

    def for_account(self, name: str) -> KeyPair | None:
        for pair in self.pairs.values():
            if name in pair.accounts:
                return pair
        return None

    def _session(self, pair: KeyPair) -> Any:
        if pair.session is None:
            from connectors.alpaca_broker import BrokerSession  # alpaca-py: only where a client is made

            pair.session = BrokerSession(pair.credentials, trading_url=pair.url, data_url=self.data_url,
                                         timeout_s=self.timeout_s, label=pair.label)
        return pair.session

    async def snapshot(self, trigger: str, pairs: Sequence[KeyPair] | None = None) -> int:
        """Reads and publishes every account of `pairs` (all by default); returns records published.
        An account Alpaca cannot answer for is logged and skipped: its snapshot ages, and the
        desk's broker_state gate fails its entries closed until a read succeeds."""
        published = 0
        futures: list[Awaitable[Any]] = []
        for pair in pairs if pairs is not None else list(self.pairs.values()):
            session = self._session(pair)
            for name in pair.accounts:
                now = self.now()
                try:
                    ours = self.pipeline_symbols(name)
                    account, positions = await asyncio.to_thread(
                        session.snapshot, name, pipeline_symbols=ours, trigger=trigger, now=now,
                        expect_held=self.open_symbols(name))
                except Exception as exc:  # noqa: BLE001 - Alpaca unreachable: try again next time
                    self.failures += 1
                    log.warning("broker[%s]: snapshot (%s) failed: %s", name, trigger, exc)
                    continue
                # positions first: the account record closes the snapshot for the desk's freshness
                for pos in positions:
                    futures.append(await self.send(BROKER_POSITIONS, pos))
                futures.append(await self.send(BROKER_ACCOUNTS, account))
                published += len(positions) + 1
                self._held_options[name] = {p.symbol for p in positions
                                            if p.qty and p.asset_class == "us_option"}
                self.snapshots += 1
        if futures:
            await asyncio.gather(*futures)
        return published

    async def quotes(self) -> int:
        """Latest quotes of every option contract held, once a minute (options.quotes)."""
        contracts = sorted({c for held in self._held_options.values() for c in held if parse_occ(c)})
        if not contracts or not self.pairs:
            return 0
        session = self._session(next(iter(self.pairs.values())))
        try:
            quotes = await asyncio.to_thread(session.option_quotes, contracts, now=self.now())
        except Exception as exc:  # noqa: BLE001 - no marks this minute: the snapshot's marks stand
            log.warning("broker: option quotes failed: %s", exc)
            return 0
        futures = [await self.send(OPTION_QUOTES, q) for q in quotes]
        if futures:
            await asyncio.gather(*futures)
        return len(futures)

    def remember(self, account: str, positions: Any) -> None:
        """What the topic says was last published (a restart), so a position closed while this
        stage was down still gets its qty 0 record, with its last fill price."""
        pair = self.for_account(account)
        if pair is not None:
            self._session(pair).remember(account, list(positions))

    @staticmethod
    def after_update(pair: KeyPair, delay_s: float = 1.0, trigger: str = "trade_update") -> None:
        """A trade update arrived on `pair`, or its stream (re)connected: snapshot its accounts soon
        (debounced)."""
        if pair.snapshot_due == 0.0:
            pair.snapshot_due = time.monotonic() + delay_s
            pair.due_trigger = trigger

    async def due(self) -> int:
        """Snapshots asked for by trade updates whose delay has passed."""
        now = time.monotonic()
        pairs = [p for p in self.pairs.values() if p.snapshot_due and p.snapshot_due <= now]
        for p in pairs:
            p.snapshot_due = 0.0
        published = 0
        for trigger in sorted({p.due_trigger for p in pairs}):
            published += await self.snapshot(trigger, [p for p in pairs if p.due_trigger == trigger])
        return published

    def cancel_legs(self, account: str, parent_client_order_id: str) -> int:
        """Cancels the open legs of a bracket entry before the desk's own exit (blocking)."""
        pair = self.for_account(account)
        if pair is None:
            return 0
        try:
            n: int = self._session(pair).cancel_legs(parent_client_order_id)
        except Exception as exc:  # noqa: BLE001 - the exit goes on; a leg that fills is reconciled
            log.warning("broker[%s]: cancelling the legs of %s failed: %s", account, parent_client_order_id, exc)
            return 0
        return n
