-- The money ledger: one source of truth for what was paid, what is owed back and what the
-- payment provider holds. Double-entry in the manner of TigerBeetle's transfers: a
-- transfer moves a positive amount (integer minor units of one currency) from its debit
-- account to its credit account, so every transfer balances by construction and the
-- accounts' balances of a currency always sum to zero. Append-only (live/append_only.sql).
-- Each transfer is posted in the transaction of the fact it records, and names that fact
-- (kind, source_id): one transfer per fact, never two.

-- The accounts (a balance is credits less debits; "normal" says which side it grows on).
CREATE TABLE stockcore.ledger_accounts (
    account  smallint PRIMARY KEY,
    name     text     NOT NULL UNIQUE,
    normal   text     NOT NULL CHECK (normal IN ('debit', 'credit')),
    about    text     NOT NULL
);
INSERT INTO stockcore.ledger_accounts (account, name, normal, about) VALUES
    (1, 'provider_clearing', 'debit',  'money the provider captured for us and has yet to show settled'),
    (2, 'sales',             'credit', 'orders paid: what the shoppers paid for their orders'),
    (3, 'refunds',           'debit',  'what paid orders cancelled owe back (against sales)'),
    (4, 'refunds_payable',   'credit', 'refunds owed to shoppers and not yet paid by the provider'),
    (5, 'provider_balance',  'debit',  'money the provider holds for us, as its settlement feed says'),
    (6, 'fees',              'debit',  'the provider''s fees'),
    (7, 'bank',              'debit',  'payouts from the provider to our bank'),
    (8, 'to_return',         'credit', 'money captured that paid no order, owed back to its payer');

-- What a transfer records (its kind), and the accounts it debits and credits. Posted by
-- stockcore's own facts, in their transactions:
--   1 ORDER_PAID        provider_clearing <- sales            source: the order id
--   2 REFUND_OWED       refunds <- refunds_payable            source: the order id
--   3 CHARGE_TO_RETURN  provider_clearing <- to_return        source: the provider's charge id
-- Posted from the provider's settlement feed (source: the provider's balance transaction):
--   4 PROVIDER_CHARGE   provider_balance <- provider_clearing
--   5 PROVIDER_REFUND   refunds_payable or to_return <- provider_balance
--   6 PROVIDER_FEE      fees <- provider_balance
--   7 PAYOUT            bank <- provider_balance
CREATE TABLE stockcore.ledger_kinds (
    kind  smallint PRIMARY KEY,
    name  text     NOT NULL UNIQUE
);
INSERT INTO stockcore.ledger_kinds (kind, name) VALUES
    (1, 'ORDER_PAID'), (2, 'REFUND_OWED'), (3, 'CHARGE_TO_RETURN'), (4, 'PROVIDER_CHARGE'),
    (5, 'PROVIDER_REFUND'), (6, 'PROVIDER_FEE'), (7, 'PAYOUT');

CREATE TABLE stockcore.ledger_transfers (
    transfer_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Codes of ledger_kinds and ledger_accounts, checked by value (no foreign key: a
    -- payment's transaction should not lock their rows).
    kind            smallint    NOT NULL CHECK (kind BETWEEN 1 AND 7),
    source_id       text        NOT NULL,
    -- The order the money is about, when there is one.
    order_id        text,
    debit_account   smallint    NOT NULL CHECK (debit_account BETWEEN 1 AND 8),
    credit_account  smallint    NOT NULL CHECK (credit_account BETWEEN 1 AND 8),
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    posted_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, source_id),
    CHECK (debit_account <> credit_account)
);
-- No index by order: an order's own transfers are found by (kind, source_id), their
-- source being the order; each index is paid for by every payment.

-- A database that already has paid orders gets their transfers, so the ledger starts
-- whole: what each order was paid (at its payment's time), what each cancelled paid
-- order owes back (at its last change), and each charge to return (when recorded).
INSERT INTO stockcore.ledger_transfers
       (kind, source_id, order_id, debit_account, credit_account, amount_minor, currency, posted_at)
SELECT 1, o.order_id, o.order_id, 1, 2, o.paid_minor, o.currency,
       coalesce(p.created_at, o.updated_at)
  FROM stockcore.orders o
  LEFT JOIN stockcore.payments p ON p.payment_id = o.payment_id
 WHERE o.payment_id IS NOT NULL AND o.paid_minor > 0
 ORDER BY coalesce(p.created_at, o.updated_at), o.order_id;
INSERT INTO stockcore.ledger_transfers
       (kind, source_id, order_id, debit_account, credit_account, amount_minor, currency, posted_at)
SELECT 2, o.order_id, o.order_id, 3, 4, o.refund_owed_minor, o.currency, o.updated_at
  FROM stockcore.orders o
 WHERE o.refund_owed_minor > 0
 ORDER BY o.updated_at, o.order_id;
INSERT INTO stockcore.ledger_transfers
       (kind, source_id, order_id, debit_account, credit_account, amount_minor, currency, posted_at)
SELECT 3, r.charge_id, r.order_id, 1, 8, r.amount_minor, r.currency, r.recorded_at
  FROM stockcore.payments_to_return r
 ORDER BY r.recorded_at, r.charge_id;
