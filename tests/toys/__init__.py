"""Toy extensions that tests/unit/test_registries.py registers with one line each: an
optimizer, a gate rule and a dataset (the recipes of docs/architecture.md)."""
