-- A refund the provider failed: the reconciler states it REFUND_FAILED (verdict 8) when
-- the refund's refund_failure transaction is read in the feed, and opens an exception of
-- that reason, since the money is still owed to the shopper until a person refunds it by
-- hand (2 REFUNDED) or writes it off (3 WRITTEN_OFF). The codes 1-7 of 018 keep their
-- meaning:
--   8 REFUND_FAILED  the provider failed the refund (its refund_failure transaction)
ALTER TABLE stockcore.reconciliation_statements
    DROP CONSTRAINT reconciliation_statements_verdict_check;
ALTER TABLE stockcore.reconciliation_statements
    ADD CONSTRAINT reconciliation_statements_verdict_check CHECK (verdict BETWEEN 1 AND 8);
ALTER TABLE stockcore.reconciliation_exceptions
    DROP CONSTRAINT reconciliation_exceptions_reason_check;
ALTER TABLE stockcore.reconciliation_exceptions
    ADD CONSTRAINT reconciliation_exceptions_reason_check CHECK (reason BETWEEN 2 AND 8);
