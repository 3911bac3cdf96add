"""Online calibration: every cheap decision verified on a sample of live traffic and kept within a
stated quality target (issue 15).

Pure and store-agnostic: every piece of state is a plain dataclass that `to_json` / `from_json`
round-trips, so the gateway can keep it in SQLite, PostgreSQL or Redis and share it across
instances. Nothing here calls a model, reads a clock it was not given, or touches the event loop.

- settings.py      quality targets (per route, for the semantic cache) as config types
- bounds.py        Clopper-Pearson bounds, fixed-sample and anytime-valid (Beta mixture)
- betting.py       anytime-valid tests that a mean is below zero, by betting (e-processes)
- sampling.py      the seeded coin, and the daily USD cap on shadow calls
- verification_plan.py  with what probability each decision is labelled (dense near the cut)
- comparators.py   is the cheap answer as good as the reference? (exact, numeric, final answer,
                   JSON, answer-embedding similarity; the LLM judge as an interface)
- calibrator.py    the cheap share of a router or cascade, certified cut by cut from weighted labels
- prior.py         the model file's calibration curve as N pseudo-outcomes
- domain_router.py the offline router as a prior, corrected by labelled neighbours (kNN)
- ranking_switch.py  the learned ranking as a challenger, frozen and switched in by a betting test
- health.py        flags a router worse than random or the length baseline
- cache_acceptance.py  one semantic-cache threshold certified on pooled labels, stricter where
                   conflicts were seen
"""
