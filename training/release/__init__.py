"""Release checks: what a bundle must pass before it ships, each writing its figures into the
bundle's metadata, model card or README (equivalence of a faster engine, of a faster decoder;
the README's figures table)."""
