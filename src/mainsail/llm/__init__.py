"""The model gateway: normalized types, provider adapters, resilience wrappers, metering.

Nothing here imports FastAPI, SQLAlchemy or a domain; provider SDKs appear only in
``providers/``. Callers see ``types`` and ``errors`` alone.
"""
