"""Framework-free pipeline stages: plain typed callables, testable without Kafka."""
