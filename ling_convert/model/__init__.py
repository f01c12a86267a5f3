"""What a model is: the architecture registry, its typed config, tensor ops and pure config rewrites.

Depends on core/ only."""
