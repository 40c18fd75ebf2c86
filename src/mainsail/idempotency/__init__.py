"""Idempotency-Key support (draft-ietf-httpapi-idempotency-key-header): a request retried
with the same key gets the first one's stored answer instead of running twice."""
