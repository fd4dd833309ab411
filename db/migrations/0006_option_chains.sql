-- Option chains (options.quotes v2): the contract's terms, its open interest and which chain
-- snapshot it belongs to, so "which contracts did the desk consider, and why this one" is a query.
-- A modelled row is priced by Black-Scholes (a backtest without recorded quotes), never a quote.

ALTER TABLE option_quotes
    ADD COLUMN expiration       date,
    ADD COLUMN strike           double precision,
    ADD COLUMN option_type      text CHECK (option_type IN ('call', 'put')),
    ADD COLUMN open_interest    bigint,
    ADD COLUMN penny_program    boolean,
    ADD COLUMN underlying_price double precision,
    ADD COLUMN chain_id         text,
    ADD COLUMN chain_as_of      timestamptz,
    ADD COLUMN modelled         boolean NOT NULL DEFAULT false;
CREATE INDEX option_quotes_chain ON option_quotes (underlying, chain_as_of DESC) WHERE chain_id IS NOT NULL;
