"""Savings with a quality guarantee, live: the gateway side of learning/online (issue 15).

- state.py                what a calibrated route keeps (one store row, JSON) and one request's decision
- live.py                 one route's calibration (`RouteCalibration`), made of the three below, and
                          its figures
- route_state.py          its parts and state, the journal of unsaved changes, the store's view of it
- route_decisions.py      decide at request time (the cut in force, the labelling probability, the
                          label coin)
- route_outcomes.py       the daily USD cap; observe verified outcomes, router health and its
                          fallback to length, the ranking switch
- cache_live.py           the semantic cache's acceptance threshold, calibrated the same way
- verifier.py             shadow verification after the response: which requests, background tasks,
                          bounded, dropped cleanly at shutdown
- route_verification.py   a route's labelled decision verified: capped, compared, observed, recorded
- cache_verification.py   the same for the semantic cache's hits and unserved candidates
- verification_calls.py   the reference call through the attempt runner; the comparators
                          (mechanical, answer embeddings, an LLM judge)
- spend.py                the daily caps admitted before any verification call, at the worst case
                          of the shadow call and the LLM judge's (routing/worst_case.py), held until
                          charged
- service.py              every calibration kept in the store (compare-and-set, one writer per
                          update), refreshed from other instances
- metrics.py              the Prometheus families, read at scrape time
- setup.py                wiring at start-up (imported only when some route or the cache is
                          calibrated: the core install has no NumPy)

The method and its guarantee are in docs/quality-guarantee.md.
"""
