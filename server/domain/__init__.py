"""The domain: stock holds and their rules, as plain code (no protobuf, no drivers)."""
