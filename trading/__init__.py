"""The pure trading domain, shared by the agents, the backtester and the tests: no I/O (import-linter
keeps faust, confluent_kafka, psycopg, httpx, websockets and alpaca out).
"""
