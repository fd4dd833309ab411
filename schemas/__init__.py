"""The data contract: Avro schemas, record types, the topic registry and the value codec."""
