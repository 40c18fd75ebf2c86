"""Durable background jobs: the ``jobs`` table is the truth; executors only run what it says."""
