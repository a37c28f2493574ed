"""Storage adapters: PostgreSQL (the durable authority) and Redis (the admission gate)."""
