"""The demo harness: the bundled broker, a simulated ingest, sample broadcasts and the demo runs."""
