"""One-off studies: each answers one question about a model and writes its table and JSON.

Imported by nothing but their own entry points and tests.
"""
