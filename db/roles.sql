-- A least-privilege role for the Postgres sink (an example to adapt, not a migration).
--
-- The sink never creates or alters tables: `ops-pipeline migrate` does, as the owner. The sink
-- reads, inserts and updates its tables, and stages each batch in temporary tables
-- (CREATE TEMP TABLE ... ON COMMIT DELETE ROWS, once per connection), which needs the TEMPORARY
-- privilege on the database; PostgreSQL grants that to PUBLIC by default, so the GRANT below
-- matters only where it was revoked. Run as the owner of the tables, in the database and with
-- the search_path of the schema that holds them; change the name and the password first.

CREATE ROLE ops_pipeline_sink LOGIN PASSWORD 'change-me';

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO ops_pipeline_sink', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ops_pipeline_sink', current_schema());
END
$$;

GRANT SELECT, INSERT, UPDATE ON
    lane_telemetry,
    lane_features,
    inbound_events_raw,
    inbound_events_classified,
    dispatch_recommendations,
    dispatch_executions,
    active_positions,
    lane_watchlist_state,
    broker_accounts,
    option_quotes,
    account_equity,
    reconcile_events,
    alerts,
    control_events,
    clock_minutes,
    dead_letters,
    sink_offsets
TO ops_pipeline_sink;

-- The old runbook's views (0004_runbook_views.sql): the sink never uses them; SELECT lets whoever
-- holds this role's credentials run the runbook queries (README, "Runbook") with them.
GRANT SELECT ON
    dispatch_recommendations_by_account,
    dispatch_skip_reasons,
    dispatcher_runs
TO ops_pipeline_sink;

-- DATABASE_URL=postgresql://ops_pipeline_sink:change-me@host:5432/db  ops-pipeline run --only sink
