"""Shared value types and the error tree: the bottom room every other room may import."""
