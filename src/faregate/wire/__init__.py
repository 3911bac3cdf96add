"""Wire formats: one module per protocol, translating to and from the internal types."""
