"""Orders: the order core, the outbox relay and the event feed of WatchOrders."""
