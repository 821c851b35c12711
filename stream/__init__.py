"""The Faust service, the CLI and the broker-free pipeline they share."""
