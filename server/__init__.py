"""stockcore server: two-phase stock holds over Redis and sharded PostgreSQL, served over gRPC."""
