"""`faregate cost`: monthly projections and re-pricing of recorded traffic, in exact Decimal."""
