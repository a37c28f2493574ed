"""The refund sender (`python -m refunds`): pays back, through the payment provider, the
refunds stockcore owes (stockcore.refunds, made in the transaction of the fact that owes
them: a paid order cancelled, a captured charge to return). refunds/worker.py says how it
sends, retries and follows them; the provider's webhooks settle them at the receiver
(python -m payments), the sender's polls otherwise."""
