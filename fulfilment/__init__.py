"""Fulfilment: paid orders handed to the warehouse, booked with a carrier, shipped and
followed to delivery by the fulfilment worker (`python -m fulfilment`). It is a client of the
order server's contract (clients/), with its own settings (fulfilment/config.py), storage
adapter for the fulfilment tables (fulfilment/store.py), metrics, alert rules, and the
`stockctl fulfilment` commands that read those tables (fulfilment/admin.py)."""
