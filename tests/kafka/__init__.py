"""Apache Kafka for the test suite: the jars (fetch), KRaft brokers on loopback (cluster), pytest fixtures (plugin)."""
