"""One-off studies: each answers one question about a model and prints its table (and writes
its JSON). Imported by nothing but their own entry points and tests."""
