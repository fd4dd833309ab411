"""The pure trading domain, shared by the agents, the backtester and the tests.

No I/O: nothing here imports faust, confluent_kafka, psycopg, httpx, websockets or alpaca
(a lint contract run by `make test` enforces it).
"""
