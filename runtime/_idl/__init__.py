"""Runtime support for generated (IDL) code: struct wrappers and the Cap'n Proto payload codec."""
