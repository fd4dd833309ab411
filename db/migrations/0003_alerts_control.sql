-- The watchdog's alerts (every firing and resolution) and the operator's control changes.

CREATE TABLE alerts (
    rule         text        NOT NULL,
    subject      text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('firing', 'resolved')),
    severity     text        NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    started_at   timestamptz NOT NULL,
    at           timestamptz NOT NULL,
    summary      text        NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, subject, started_at, state)
);
CREATE INDEX alerts_at ON alerts (at DESC);

-- Every halt, resume and setting change, when, what and why (the control topic keeps the latest
-- per key; this keeps them all).
CREATE TABLE control_events (
    id            text        PRIMARY KEY,
    account_name  text        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('halt', 'resume', 'set')),
    at            timestamptz NOT NULL,
    reason        text        NOT NULL,
    settings      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    flatten       boolean     NOT NULL DEFAULT false,
    operator      text        NOT NULL DEFAULT '',
    ingested_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX control_events_at ON control_events (at DESC);
