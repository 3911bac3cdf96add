"""`faregate replay` and `faregate router eval`: routing policies replayed on recorded outcomes."""
