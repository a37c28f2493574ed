-- Reconciliation: the payment provider's settlement feed as stockcore's reconciler
-- (python -m payments.reconciler) read it, the ledger transfers it posted from it, and
-- what it found when it compared the provider's money with ours. The reconciler owns these
-- tables; its functions are in live/reconciliation.sql.

-- A failed refund gives the money back to the provider's balance: the reverse of its
-- PROVIDER_REFUND, posted from the feed's refund_failure transaction.
--   8 PROVIDER_REFUND_FAILED  provider_balance <- refunds_payable or to_return
INSERT INTO stockcore.ledger_kinds (kind, name) VALUES (8, 'PROVIDER_REFUND_FAILED');
ALTER TABLE stockcore.ledger_transfers DROP CONSTRAINT ledger_transfers_kind_check;
ALTER TABLE stockcore.ledger_transfers ADD CONSTRAINT ledger_transfers_kind_check
    CHECK (kind BETWEEN 1 AND 8);

-- Where the reconciler is in the provider's settlement feed: the cursor of the last
-- balance transaction it read and posted (0: none yet). One row, moved forward in the
-- transaction that records and posts what it read, so a crash neither skips nor repeats.
CREATE TABLE stockcore.settlement_cursor (
    feed        text        PRIMARY KEY,
    cursor      bigint      NOT NULL CHECK (cursor >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO stockcore.settlement_cursor (feed, cursor) VALUES ('provider', 0);

-- Every balance transaction of the feed, as read: one row per provider id, never changed.
-- amount_minor is signed as the provider shows it (a charge +, its fee, a refund and a
-- payout -, a refund_failure +). charge_id is the charge it is about: its source for a
-- charge and a fee, the refunded charge for a refund and a refund_failure, NULL for a
-- payout. read_at is when the reconciler read it, which is when it counts as settled.
CREATE TABLE stockcore.settlement_transactions (
    txn_id        text        PRIMARY KEY,
    cursor        bigint      NOT NULL UNIQUE CHECK (cursor > 0),
    type          text        NOT NULL
                  CHECK (type IN ('charge', 'fee', 'refund', 'refund_failure', 'payout')),
    source_id     text        NOT NULL,
    charge_id     text,
    order_id      text,
    amount_minor  bigint      NOT NULL,
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at    timestamptz NOT NULL,
    available_on  timestamptz NOT NULL,
    read_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((type = 'payout') = (charge_id IS NULL))
);
CREATE INDEX settlement_transactions_by_charge ON stockcore.settlement_transactions (charge_id);
CREATE INDEX settlement_transactions_by_order ON stockcore.settlement_transactions (order_id);

-- The reconciler's findings: one line per finding about a subject, never changed
-- (live/append_only.sql). A subject is a charge (subject_kind 1: a payment of ours, a
-- charge to return, or a charge the provider captured; subject_id the charge id) or a
-- refund (2: subject_id the provider's refund id). verdict (payments.matching.Verdict):
-- 1 MATCHED, 2 MISSING_AT_PROVIDER, 3 MISSING_HERE, 4 AMOUNT_DIFFERS, 5 CURRENCY_DIFFERS,
-- 6 DUPLICATED, 7 SETTLED_LATE. A later finding about the same subject is a new line
-- naming the one it corrects. ours_*/theirs_* are what each side recorded (NULL: nothing);
-- fact_at is when the fact happened (the payment, the charge, the refund), stated_at when
-- the line was written, so lag_s measures how long a fact waited for its statement.
-- recovered: the reconciler itself confirmed the payment of a charge whose webhook never
-- came.
CREATE TABLE stockcore.reconciliation_statements (
    statement_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_kind    smallint    NOT NULL CHECK (subject_kind BETWEEN 1 AND 2),
    subject_id      text        NOT NULL,
    order_id        text,
    verdict         smallint    NOT NULL CHECK (verdict BETWEEN 1 AND 7),
    ours_amount     bigint,
    ours_currency   text,
    theirs_amount   bigint,
    theirs_currency text,
    recovered       boolean     NOT NULL DEFAULT false,
    corrects        bigint      UNIQUE REFERENCES stockcore.reconciliation_statements,
    fact_at         timestamptz NOT NULL,
    stated_at       timestamptz NOT NULL DEFAULT now(),
    lag_s           double precision GENERATED ALWAYS AS
                    (extract(epoch FROM stated_at - fact_at)::double precision) STORED
);
CREATE INDEX reconciliation_statements_by_subject
    ON stockcore.reconciliation_statements (subject_kind, subject_id, statement_id);

-- A discrepancy to be dealt with by a person: one per statement that is not MATCHED,
-- opened with it. resolution (payments.matching.Resolution): 1 ACCEPTED, 2 REFUNDED,
-- 3 WRITTEN_OFF by a person (resolved_by, resolved_why), or 4 CORRECTED by the reconciler
-- when a later statement about the same subject supersedes it. Resolved once; nothing
-- else of a row ever changes (live/append_only.sql).
CREATE TABLE stockcore.reconciliation_exceptions (
    exception_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    statement_id   bigint      NOT NULL UNIQUE REFERENCES stockcore.reconciliation_statements,
    reason         smallint    NOT NULL CHECK (reason BETWEEN 2 AND 7),
    opened_at      timestamptz NOT NULL DEFAULT now(),
    resolution     smallint    CHECK (resolution BETWEEN 1 AND 4),
    resolved_by    text,
    resolved_why   text,
    resolved_at    timestamptz,
    CHECK ((resolution IS NULL) = (resolved_by IS NULL)
           AND (resolution IS NULL) = (resolved_why IS NULL)
           AND (resolution IS NULL) = (resolved_at IS NULL))
);
CREATE INDEX reconciliation_exceptions_open ON stockcore.reconciliation_exceptions (opened_at)
    WHERE resolution IS NULL;
