-- The broker's truth (issue 14): account snapshots, option quotes, equity points, reconcile events,
-- and active_positions widened so it shows every position held at Alpaca next to the desk's own.

-- One row per account snapshot (history), as published on broker.accounts.
CREATE TABLE broker_accounts (
    account_name            text             NOT NULL,
    as_of                   timestamptz      NOT NULL,
    status                  text             NOT NULL,
    currency                text             NOT NULL,
    cash                    double precision NOT NULL,
    buying_power            double precision NOT NULL,
    options_buying_power    double precision,
    equity                  double precision NOT NULL,
    last_equity             double precision,
    long_market_value       double precision,
    short_market_value      double precision,
    options_approved_level  integer,
    trading_blocked         boolean          NOT NULL,
    open_orders             jsonb            NOT NULL DEFAULT '[]',
    trigger                 text             NOT NULL,
    ingested_at             timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (account_name, as_of)
);

-- active_positions gets a second writer, broker.positions; see sinks/tables.py for the merge rule.
-- qty, avg_price and status are the broker's once it has reported the position (broker_as_of set),
-- the desk's before that; desk_updated_at and desk_status version the desk's own columns, and
-- updated_at becomes the time of the latest record of either side.
ALTER TABLE active_positions
    ALTER COLUMN opened_at DROP NOT NULL,  -- the broker does not say when an external position opened
    ADD COLUMN desk_updated_at  timestamptz,
    ADD COLUMN desk_status      text CHECK (desk_status IN ('OPEN', 'CLOSED')),
    ADD COLUMN origin           text CHECK (origin IN ('pipeline', 'external')),
    ADD COLUMN asset_class      text CHECK (asset_class IN ('us_equity', 'us_option', 'crypto')),
    ADD COLUMN market_value     double precision,
    ADD COLUMN cost_basis       double precision,
    ADD COLUMN unrealized_pl    double precision,
    ADD COLUMN unrealized_plpc  double precision,
    ADD COLUMN current_price    double precision,
    ADD COLUMN broker_as_of     timestamptz,
    ADD COLUMN underlying       text,
    ADD COLUMN expiration       date,
    ADD COLUMN option_type      text CHECK (option_type IN ('call', 'put')),
    ADD COLUMN strike           double precision,
    ADD COLUMN multiplier       double precision;
-- every row so far came from the desk, which traded equities only
UPDATE active_positions
   SET desk_updated_at = updated_at, desk_status = status, origin = 'pipeline', asset_class = 'us_equity';

-- Quotes, IV and greeks of option contracts the pipeline used (options.quotes).
CREATE TABLE option_quotes (
    contract     text             NOT NULL,
    underlying   text             NOT NULL,
    as_of        timestamptz      NOT NULL,
    bid          double precision,
    ask          double precision,
    bid_size     double precision,
    ask_size     double precision,
    last         double precision,
    iv           double precision,
    delta        double precision,
    gamma        double precision,
    theta        double precision,
    vega         double precision,
    source       text             NOT NULL,
    fetched_at   timestamptz      NOT NULL,
    ingested_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (contract, as_of)
);

-- One equity point per account per minute (equity).
CREATE TABLE account_equity (
    account_name    text             NOT NULL,
    ts              timestamptz      NOT NULL,
    equity          double precision NOT NULL,
    cash            double precision NOT NULL,
    realized_pnl    double precision NOT NULL,
    unrealized_pnl  double precision NOT NULL,
    open_positions  integer          NOT NULL CHECK (open_positions >= 0),
    source          text             NOT NULL,
    ingested_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (account_name, ts)
);

-- Differences between the desk's book and the broker, both sides and the action (reconcile).
-- symbol is NULL for an account-level event (cash drift): the unique index treats NULL as ''.
CREATE TABLE reconcile_events (
    account_name  text        NOT NULL,
    as_of         timestamptz NOT NULL,
    decided_at    timestamptz NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('quantity', 'unknown_position', 'closed_at_broker',
                                                       'missed_fill', 'unknown_order', 'cash_drift')),
    symbol        text,
    desk          text        NOT NULL,
    broker        text        NOT NULL,
    action        text        NOT NULL,
    detail        text        NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX reconcile_events_key
    ON reconcile_events (account_name, decided_at, kind, (coalesce(symbol, '')));
