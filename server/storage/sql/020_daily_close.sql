-- The provider balance's daily close, per currency and UTC day: what the provider held at
-- the start of the day (opening, the previous closed day's closing), what moved it (the
-- provider-side ledger transfers, kinds 4-8) and what it held at the end. A day is closed
-- once and never changes (live/append_only.sql); its functions are in live/closing.sql.
CREATE TABLE stockcore.daily_closes (
    currency               text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    day                    date        NOT NULL,
    opening_minor          bigint      NOT NULL,
    charges_minor          bigint      NOT NULL CHECK (charges_minor >= 0),
    refunds_minor          bigint      NOT NULL CHECK (refunds_minor >= 0),
    fees_minor             bigint      NOT NULL CHECK (fees_minor >= 0),
    payouts_minor          bigint      NOT NULL CHECK (payouts_minor >= 0),
    refund_failures_minor  bigint      NOT NULL CHECK (refund_failures_minor >= 0),
    closing_minor          bigint      NOT NULL,
    closed_at              timestamptz NOT NULL DEFAULT now(),
    closed_by              text        NOT NULL,
    PRIMARY KEY (currency, day),
    CHECK (closing_minor = opening_minor + charges_minor - refunds_minor - fees_minor
                           - payouts_minor + refund_failures_minor)
);

-- Which transfers each closed day counted, each once: a transfer belongs to the UTC day
-- of its provider time (settlement_transactions.created_at), and is counted in that day
-- or, when that day had closed before it was posted, in the next day closed (belongs_to
-- earlier than day: a late item).
CREATE TABLE stockcore.daily_close_items (
    transfer_id  bigint  PRIMARY KEY REFERENCES stockcore.ledger_transfers,
    currency     text    NOT NULL,
    day          date    NOT NULL,
    belongs_to   date    NOT NULL CHECK (belongs_to <= day),
    FOREIGN KEY (currency, day) REFERENCES stockcore.daily_closes
);
CREATE INDEX daily_close_items_by_day ON stockcore.daily_close_items (currency, day);

-- The provider-side transfers, found by currency without reading the order-side ones
-- (each payment posts one of those; the feed posts these).
CREATE INDEX ledger_transfers_provider ON stockcore.ledger_transfers (currency, transfer_id)
    WHERE kind BETWEEN 4 AND 8;
