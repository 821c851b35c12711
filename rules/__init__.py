"""Policies that turn scores over time into verdicts and idempotent alerts."""
