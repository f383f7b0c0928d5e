"""sstparse: multi-domain human parsing with Scalable Semantic Transfer, trained on Ray."""

__version__ = "0.1.0"
