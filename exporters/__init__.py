"""Sinks: Milvus, Prometheus metrics, Kafka outputs, and an in-memory sink for tests."""
