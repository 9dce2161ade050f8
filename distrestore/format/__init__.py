"""The TensorFlow tensor-bundle format, pure and I/O-free: tables, messages, dtypes, checksums."""
