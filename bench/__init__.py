"""ElasticCode benchmarks: ``python -m bench calls [--json]``."""
