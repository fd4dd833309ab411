"""Sources: Alpaca bars (websocket), backfill (REST), RSS, replay."""
