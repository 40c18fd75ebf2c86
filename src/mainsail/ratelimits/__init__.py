"""Request limits for the whole API: per API key or user by role, per address when anonymous.

``policy.RateLimits`` turns the settings into ``limits`` items on one storage (memory in the
embedded shape, Redis in the scaled one) and decides; ``middleware.RateLimitMiddleware`` is
the pure ASGI edge that finds the caller, asks, and answers 429 or adds the headers.
"""
