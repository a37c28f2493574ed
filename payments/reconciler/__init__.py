"""The reconciler (`python -m payments.reconciler`), a program of its own beside the webhook
receiver: it follows the payment provider's settlement feed into the money ledger, pays
the orders whose webhook never came, and writes what it finds as reconciliation statements
and exceptions (payments/reconciler/reconciliation.py says how)."""
