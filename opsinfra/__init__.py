"""The base layer: settings, errors, the Kafka layer, metrics, logs and the embedded services.

Everything else imports from here; this package imports nothing of the project above it.
"""
