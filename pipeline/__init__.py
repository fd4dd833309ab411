"""The shell: settings, Kafka client factory, embedded services, CLI."""
