-- The minute watermarks (clock.minutes): when each stage closed each minute in each partition, why
-- (complete, deadline, next_minute, idle), and up to which offset; the answer to "when did dispatch
-- decide this minute, and which bars had it seen". The first closure of a minute is kept.

CREATE TABLE clock_minutes (
    stage        text        NOT NULL CHECK (stage IN ('features', 'signals')),
    partition    integer     NOT NULL,
    minute       timestamptz NOT NULL,
    reason       text        NOT NULL,
    upto_offset  bigint      NOT NULL,
    input_upto   bigint      NOT NULL,
    at           timestamptz NOT NULL,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, partition, minute)
);
CREATE INDEX clock_minutes_minute ON clock_minutes (minute DESC);
