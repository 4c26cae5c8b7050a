"""Model definitions, training of the toy models, loading by name, format conversion."""
