"""Provider adapters: the only modules that import a provider SDK."""
