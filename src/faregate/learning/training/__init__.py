"""Offline training of the complexity router and the cascade judge: splits, cross-validation, fits."""
