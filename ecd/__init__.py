"""ecd: the ElasticCode node daemon (write-ahead log, scheduler, workers, topology)."""

__version__ = "0.1.0"
