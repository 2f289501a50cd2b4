"""Layer 1 of the runtime: ids, extents and slicing, futures, errors. Stdlib only."""
