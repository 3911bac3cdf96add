"""Savings with a quality guarantee, live: the gateway side of learning/online (issue 15).

- live.py        one route's calibration as the gateway keeps it: decide at request time (the cut
                 in force, the labelling probability, the label coin), observe verified outcomes,
                 the daily USD cap; pure state that round-trips through JSON
- verifier.py    shadow verification after the response: background tasks, bounded, capped,
                 dropped cleanly at shutdown; the reference call through the attempt runner
- service.py     every calibrated route: state loaded from and saved to the store (compare-and-set,
                 one writer per update), refreshed from other instances, figures for the API,
                 the metrics and the alerts

The method and its guarantee are in docs/quality-guarantee.md.
"""
