"""ElasticCode sample processor package; the callable functions live in ``sample.tasks``."""
