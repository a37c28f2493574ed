"""stockcore's side of the payment provider: the webhook receiver (`python -m payments`), a
client of the contract. It verifies each signed delivery, records each provider event once
in PostgreSQL, confirms captured charges through ConfirmPayment, records the charges
that paid nothing as money to return, and settles the refunds the refund sender
(`python -m refunds`) made when the provider reports their outcome (payments/receiver.py
says how). The reconciler (`python -m payments.reconciler`, payments/reconciler/) is a
program of its own beside it."""
