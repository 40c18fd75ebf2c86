"""Documents: uploads turned into searchable text."""
