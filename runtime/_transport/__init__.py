"""Layer 2 of the runtime: framing, codecs (capnp envelope, out-of-band buffers), channels."""
