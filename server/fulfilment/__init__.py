"""Fulfilment: paid orders handed to the warehouse, booked with a carrier, shipped and
followed to delivery by the fulfilment worker (`python -m server fulfil`)."""
