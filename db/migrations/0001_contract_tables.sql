-- The tables of the topic contract, under the names the old system's runbook queries use.
-- Every table has the natural unique key that makes the sink's writes idempotent.

CREATE TABLE lane_telemetry (
    ticker        text             NOT NULL,
    ts            timestamptz      NOT NULL,
    open          double precision NOT NULL,
    high          double precision NOT NULL,
    low           double precision NOT NULL,
    close         double precision NOT NULL,
    volume        bigint           NOT NULL,
    trade_count   bigint,
    vwap          double precision,
    source        text             NOT NULL,
    revision      integer          NOT NULL DEFAULT 0,
    ingested_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (ticker, ts)
);

CREATE TABLE lane_features (
    ticker          text             NOT NULL,
    ts              timestamptz      NOT NULL,
    close           double precision NOT NULL,
    sma_20          double precision,
    sma_50          double precision,
    volume_current  bigint           NOT NULL,
    volume_avg_20   numeric(20, 2),
    volume_ratio    numeric(10, 4),
    volume_surge    boolean,
    rsi_14          double precision,
    macd            double precision,
    macd_signal     double precision,
    macd_hist       double precision,
    bb_upper        double precision,
    bb_middle       double precision,
    bb_lower        double precision,
    bars_seen       integer          NOT NULL,
    revision        integer          NOT NULL DEFAULT 0,
    computed_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (ticker, ts)
);

CREATE TABLE inbound_events_raw (
    event_id             text        PRIMARY KEY,
    feed                 text        NOT NULL,
    title                text        NOT NULL,
    summary              text        NOT NULL,
    link                 text,
    published            timestamptz NOT NULL,
    published_estimated  boolean     NOT NULL DEFAULT false,
    fetched_at           timestamptz NOT NULL,
    ingested_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inbound_events_classified (
    event_id       text             NOT NULL,
    ticker         text             NOT NULL,
    tickers        text[]           NOT NULL,
    sentiment      text             NOT NULL CHECK (sentiment IN ('positive', 'negative', 'neutral')),
    score          double precision NOT NULL,
    model          text             NOT NULL,
    published      timestamptz      NOT NULL,
    classified_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, ticker)
);

-- One row per recommendation: created from `signals` (PENDING) or from the first execution,
-- whichever the sink sees first. There is no PROCESSING state: nothing can stick in it.
CREATE TABLE dispatch_recommendations (
    recommendation_id  uuid             PRIMARY KEY,
    ts                 timestamptz,
    ticker             text,
    action             text             CHECK (action IN ('BUY', 'SELL')),
    base_confidence    double precision,
    volume_multiplier  double precision,
    confidence         double precision,
    sentiment          double precision,
    reason             text,
    features           jsonb,
    strategy_version   text,
    status             text             NOT NULL DEFAULT 'PENDING'
                       CHECK (status IN ('PENDING', 'SIMULATED', 'SKIPPED', 'SUBMITTED', 'FILLED', 'FAILED')),
    risk_gate_json     jsonb,
    failure_reason     text,
    processed_at       timestamptz,
    created_at         timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX dispatch_recommendations_ticker_ts ON dispatch_recommendations (ticker, ts);

CREATE TABLE dispatch_executions (
    recommendation_id  uuid             NOT NULL,
    account_name       text             NOT NULL,
    ticker             text             NOT NULL,
    action             text             NOT NULL,
    status             text             NOT NULL
                       CHECK (status IN ('SIMULATED', 'SKIPPED', 'SUBMITTED', 'FILLED', 'FAILED')),
    intent             text             NOT NULL DEFAULT 'entry',
    mode               text             NOT NULL,
    qty                double precision,
    price              double precision,
    failure_reason     text,
    broker_order_id    text,
    client_order_id    text,
    simulated_ts       timestamptz,
    sim_json           jsonb            NOT NULL,
    risk_gate_json     jsonb            NOT NULL,
    updated_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (recommendation_id, account_name)
);

CREATE TABLE active_positions (
    account_name  text             NOT NULL,
    ticker        text             NOT NULL,
    qty           double precision NOT NULL,
    avg_price     double precision NOT NULL,
    opened_at     timestamptz      NOT NULL,
    stop          double precision,
    target        double precision,
    status        text             NOT NULL CHECK (status IN ('OPEN', 'CLOSED')),
    realized_pnl  double precision NOT NULL DEFAULT 0,
    exit_reason   text,
    updated_at    timestamptz      NOT NULL,
    PRIMARY KEY (account_name, ticker)
);

CREATE TABLE lane_watchlist_state (
    ticker        text             NOT NULL,
    ts            timestamptz      NOT NULL,
    score         double precision NOT NULL,
    rank          integer          NOT NULL,
    volume_ratio  double precision,
    momentum      double precision,
    sentiment     double precision,
    reasons       text[]           NOT NULL DEFAULT '{}',
    PRIMARY KEY (ticker, ts)
);

-- Inputs a stage could not use, with where they came from.
CREATE TABLE dead_letters (
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    stage        text        NOT NULL,
    error        text        NOT NULL,
    error_type   text        NOT NULL,
    message_key  bytea,
    payload      bytea,
    headers      jsonb,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition", "offset")
);

-- The sink's own position: written in the same transaction as the rows it covers.
CREATE TABLE sink_offsets (
    sink         text        NOT NULL,
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    next_offset  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, "partition")
);
