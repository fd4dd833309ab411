"""The faust app, its agents, and the pure logic they call (indicators, rules, gates)."""
