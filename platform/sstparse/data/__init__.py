"""Data layer: synthetic generator, converters, shards, and the Ray Data stream."""
