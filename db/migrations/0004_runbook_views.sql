-- The old runbook, answering truly (issue 16): views with the old names and meanings over the
-- tables the sink writes. Views only: the sink never reads or writes them (it issues no DDL).
-- The old system had one account, so one row per recommendation was one decision, and its
-- risk_gate_json was keyed by gate name; here each account decides every recommendation
-- (dispatch_executions, key (recommendation_id, account_name)), and dispatch_recommendations
-- aggregates them (status: the furthest any account got; risk_gate_json keyed by account, each a
-- list of gates).

-- The old dispatch_recommendations shape: one row per (recommendation, account) decision, status
-- and failure_reason that account's, risk_gate_json keyed by gate name
-- ({"confidence": {"passed", "value", "limit", "reason"}, ...}), processed_at when that account
-- decided. A recommendation no account has decided yet is one row with account_name NULL, PENDING.
CREATE VIEW dispatch_recommendations_by_account AS
SELECT r.recommendation_id,
       e.account_name,
       r.ts,
       coalesce(r.ticker, e.ticker)                 AS ticker,
       coalesce(r.action, e.action)                 AS action,
       r.base_confidence,
       r.volume_multiplier,
       r.confidence,
       r.sentiment,
       r.reason,
       r.strategy_version,
       coalesce(e.status, 'PENDING')                AS status,
       (SELECT coalesce(jsonb_object_agg(g->>'name', g - 'name'), '{}'::jsonb)
          FROM jsonb_array_elements(e.risk_gate_json) AS g) AS risk_gate_json,
       e.failure_reason,
       e.simulated_ts                               AS processed_at,
       e.intent,
       e.mode,
       e.qty,
       e.price,
       e.broker_order_id,
       e.client_order_id,
       r.created_at
  FROM dispatch_recommendations r
  LEFT JOIN dispatch_executions e ON e.recommendation_id = r.recommendation_id;

-- Why each account skipped what it skipped: one row per SKIPPED (recommendation, account), the
-- first failing gate (the one failure_reason names) with its reason, value and limit, and
-- risk_gate_json keyed by gate name, so risk_gate_json->'confidence'->>'reason' reads as it did.
CREATE VIEW dispatch_skip_reasons AS
SELECT e.recommendation_id,
       e.account_name,
       r.ts,
       e.ticker,
       e.action,
       r.confidence,
       e.status,
       f.gate->>'name'                              AS gate,
       coalesce(f.gate->>'reason', e.failure_reason) AS reason,
       f.gate->>'value'                             AS gate_value,
       f.gate->>'limit'                             AS gate_limit,
       e.failure_reason,
       (SELECT coalesce(jsonb_object_agg(g->>'name', g - 'name'), '{}'::jsonb)
          FROM jsonb_array_elements(e.risk_gate_json) AS g) AS risk_gate_json,
       e.simulated_ts                               AS processed_at
  FROM dispatch_executions e
  LEFT JOIN dispatch_recommendations r ON r.recommendation_id = e.recommendation_id
  LEFT JOIN LATERAL (
        SELECT g AS gate
          FROM jsonb_array_elements(e.risk_gate_json) WITH ORDINALITY AS x (g, i)
         WHERE NOT coalesce((g->>'passed')::boolean, false)
         ORDER BY i
         LIMIT 1) f ON true
 WHERE e.status = 'SKIPPED';

-- The old scheduler's runs: each account's dispatch agent decides the recommendations of a minute
-- together, so a run is one account's decisions of one minute of its clock (simulated_ts: decided_at,
-- wall time live, the bar's end in a replay; later statuses of an order keep it). Every decision
-- counts once: recommendations_processed = executed + submitted + skipped + failed.
--   executed: SIMULATED or FILLED; submitted: an order still without a final status; status:
--   RUNNING while an order of the run is SUBMITTED, COMPLETED_WITH_FAILURES when one FAILED, else
--   COMPLETED.
-- A minute with nothing to decide has no row (the old scheduler wrote one per firing): whether a
-- dispatch agent is alive is `ops-pipeline status` (its consumer group) and the watchdog.
CREATE VIEW dispatcher_runs AS
SELECT e.account_name || ':'
           || to_char(date_trunc('minute', e.simulated_ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
                                                    AS run_id,
       e.account_name,
       date_trunc('minute', e.simulated_ts)         AS run_minute,
       min(e.simulated_ts)                          AS started_at,
       max(e.simulated_ts)                          AS finished_at,
       CASE WHEN count(*) FILTER (WHERE e.status = 'SUBMITTED') > 0 THEN 'RUNNING'
            WHEN count(*) FILTER (WHERE e.status = 'FAILED') > 0 THEN 'COMPLETED_WITH_FAILURES'
            ELSE 'COMPLETED' END                    AS status,
       count(*)                                     AS recommendations_processed,
       count(*) FILTER (WHERE e.status IN ('SIMULATED', 'FILLED')) AS executed,
       count(*) FILTER (WHERE e.status = 'SUBMITTED') AS submitted,
       count(*) FILTER (WHERE e.status = 'SKIPPED') AS skipped,
       count(*) FILTER (WHERE e.status = 'FAILED')  AS failed,
       count(*) FILTER (WHERE e.intent <> 'entry')  AS exits,
       max(e.updated_at)                            AS last_updated_at
  FROM dispatch_executions e
 WHERE e.simulated_ts IS NOT NULL
 GROUP BY e.account_name, date_trunc('minute', e.simulated_ts);
