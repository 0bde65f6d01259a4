"""Data contracts of polyfuse: Arrow schemas, manifests, content keys and atomic IO.

Only the standard library and pyarrow are used here, so that every other package can
depend on this one and nothing heavy is imported by reading a cache.
"""
