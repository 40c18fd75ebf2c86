"""Fakes of external services, served for real so the code under test uses its real clients."""
