"""Numbered SQL migrations for the contract tables, and the code that applies them in order."""
