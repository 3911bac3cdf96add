"""Measuring tools, one subpackage each: `prompt_eval` (faregate eval), `costs` (faregate cost),
`replay` (faregate replay, router eval), `cache_eval` (faregate cache-eval). Rendering (tables,
plots) lives in cli/."""
