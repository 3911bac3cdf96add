"""Online calibration: every cheap decision verified on a sample of live traffic and kept within a
stated quality target (issue 15).

Pure and store-agnostic: every piece of state is a plain dataclass that `to_json` / `from_json`
round-trips, so the gateway can keep it in SQLite, PostgreSQL or Redis and share it across
instances. Nothing here calls a model, reads a clock it was not given, or touches the event loop.

- settings.py      quality targets (per route, for the semantic cache) as config types
- bounds.py        Clopper-Pearson bounds and the signed quality-loss bound
- sampling.py      which decisions get a shadow verification, under a daily USD cap
- comparators.py   is the cheap answer as good as the reference? (exact, numeric, final answer,
                   JSON, answer-embedding similarity; the LLM judge as an interface)
- calibrator.py    the strong-call share of a router or cascade, set from verified outcomes
- domain_router.py the offline router as a prior, corrected by verified neighbours (kNN)
- health.py        flags a router no better than random or the length baseline
- cache_acceptance.py  semantic-cache hits accepted vCache-style within a wrong-hit bound
"""
