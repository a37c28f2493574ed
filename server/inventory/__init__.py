"""The inventory core: batching requests through the Redis gate into PostgreSQL."""
