-- The reconciler (python -m payments.reconciler): the payment provider's settlement feed
-- read into stockcore.settlement_transactions and posted in the ledger, and the statements
-- and exceptions of what it found (018_reconciliation.sql has the tables and what their
-- codes mean; payments/reconciler/matching.py decides the verdicts).
--
-- Every function here that writes first locks the one settlement_cursor row (lock order:
-- the top of orders.sql, rank 8), so one reconciler at a time reads the feed and writes
-- statements, whatever runs.

-- One page of the feed, read after cursor p_after: each balance transaction recorded
-- once, its ledger transfer posted (kinds 4-8, source the provider's transaction id), and
-- the cursor moved to p_next, all in this transaction, so a crash neither skips a
-- transaction nor posts one twice. When the cursor is no longer p_after (another
-- reconciler read the page first), nothing is written and moved is false; at_cursor is
-- where the feed's reader is now. A refund (and its failure) is owed to the shopper
-- (refunds_payable) unless its charge is money to return (to_return). A transaction of
-- amount 0 is recorded and posts nothing (a transfer moves a positive amount).
CREATE OR REPLACE FUNCTION stockcore.record_settlement_page(
    p_feed text, p_after bigint, p_next bigint,
    p_txn_ids text[], p_cursors bigint[], p_types text[], p_sources text[], p_charges text[],
    p_orders text[], p_amounts bigint[], p_currencies text[], p_created timestamptz[],
    p_available timestamptz[],
    OUT moved boolean, OUT at_cursor bigint, OUT recorded int
)
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    t record;
BEGIN
    SELECT s.cursor INTO at_cursor FROM stockcore.settlement_cursor s WHERE s.feed = p_feed
       FOR UPDATE;
    IF at_cursor IS DISTINCT FROM p_after THEN
        moved := false;
        recorded := 0;
        RETURN;
    END IF;
    recorded := 0;
    FOR t IN
        SELECT * FROM unnest(p_txn_ids, p_cursors, p_types, p_sources, p_charges, p_orders,
                             p_amounts, p_currencies, p_created, p_available)
                   AS u(txn_id, cursor, type, source_id, charge_id, order_id, amount_minor,
                        currency, created_at, available_on)
         ORDER BY u.cursor
    LOOP
        INSERT INTO stockcore.settlement_transactions
               (txn_id, cursor, type, source_id, charge_id, order_id, amount_minor, currency,
                created_at, available_on)
        VALUES (t.txn_id, t.cursor, t.type, t.source_id, t.charge_id, t.order_id,
                t.amount_minor, t.currency, t.created_at, t.available_on)
        ON CONFLICT (txn_id) DO NOTHING;
        CONTINUE WHEN NOT FOUND OR t.amount_minor = 0;
        recorded := recorded + 1;
        INSERT INTO stockcore.ledger_transfers
               (kind, source_id, order_id, debit_account, credit_account, amount_minor, currency)
        SELECT k.kind, t.txn_id, nullif(t.order_id, ''), k.debit, k.credit, abs(t.amount_minor),
               t.currency
          FROM (SELECT CASE WHEN EXISTS (SELECT FROM stockcore.payments_to_return r
                                          WHERE r.charge_id = t.charge_id)
                            THEN 8 ELSE 4 END AS owed) o,
               LATERAL (VALUES ('charge', 4, 5, 1), ('fee', 6, 6, 5),
                               ('refund', 5, o.owed, 5), ('refund_failure', 8, 5, o.owed),
                               ('payout', 7, 7, 5)) AS k(type, kind, debit, credit)
         WHERE k.type = t.type;
    END LOOP;
    UPDATE stockcore.settlement_cursor s SET cursor = p_next, updated_at = now()
     WHERE s.feed = p_feed;
    at_cursor := p_next;
    moved := true;
END $$;

-- The cursor the reconciler reads the feed after.
CREATE OR REPLACE FUNCTION stockcore.read_settlement_cursor(p_feed text) RETURNS bigint
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT cursor FROM stockcore.settlement_cursor WHERE feed = p_feed
$$;

-- Captured charges in the feed for which stockcore has neither a payment nor money to
-- return, created before p_before: those whose webhook may be lost, for the reconciler to
-- decide as the webhook receiver would.
CREATE OR REPLACE FUNCTION stockcore.unrecorded_charges(p_before timestamptz)
RETURNS TABLE (txn_id text, charge_id text, order_id text, amount_minor bigint,
               currency text, created_at timestamptz)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT t.txn_id, t.charge_id, t.order_id, t.amount_minor, t.currency, t.created_at
      FROM stockcore.settlement_transactions t
     WHERE t.type = 'charge' AND t.created_at < p_before AND t.order_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM stockcore.payments p WHERE p.payment_id = t.charge_id)
       AND NOT EXISTS (SELECT FROM stockcore.payments_to_return r WHERE r.charge_id = t.charge_id)
     ORDER BY t.cursor
$$;

-- The latest statement of each subject of a kind (1 charges, 2 refunds), and whether it is
-- still to be looked at: it is not MATCHED and a person has not resolved its exception (a
-- refund the provider failed after it was MATCHED is looked at again: refunds_to_state).
CREATE OR REPLACE FUNCTION stockcore.latest_statements(p_kind smallint)
RETURNS TABLE (subject_id text, statement_id bigint, verdict smallint, open boolean)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT DISTINCT ON (s.subject_id) s.subject_id, s.statement_id, s.verdict,
           s.verdict <> 1 AND e.resolution IS NULL
      FROM stockcore.reconciliation_statements s
      LEFT JOIN stockcore.reconciliation_exceptions e ON e.statement_id = s.statement_id
     WHERE s.subject_kind = p_kind
     ORDER BY s.subject_id, s.statement_id DESC
$$;

-- What each charge still to be stated is, on both sides: every charge id of a payment, a
-- charge to return or a captured charge in the feed whose latest statement is missing or
-- still open. ours_*: the order's price (what the charge should have been) when stockcore
-- recorded the charge, as the order's payment (ours_kind 1) or as money to return (2);
-- paid_by: the charge that paid the order; theirs_*: the captured charge in the feed,
-- settled_at when it was read there; fee_*: its fee transaction's creation and reading
-- (NULL: not in the feed yet); recovered: the reconciler decided it, its webhook having
-- never come (an event it recorded as 'feed:<transaction id>').
-- The function's result changes (the fee's columns): it is dropped and made again.
DROP FUNCTION IF EXISTS stockcore.charges_to_state();
CREATE OR REPLACE FUNCTION stockcore.charges_to_state()
RETURNS TABLE (charge_id text, order_id text, ours_kind smallint, ours_amount bigint,
               ours_currency text, ours_at timestamptz, paid_by text, theirs_amount bigint,
               theirs_currency text, theirs_at timestamptz, settled_at timestamptz,
               fee_created_at timestamptz, fee_settled_at timestamptz,
               recovered boolean, latest bigint, latest_verdict smallint)
LANGUAGE sql STABLE SET jit = off AS $$
WITH ours AS (
    SELECT p.payment_id AS charge_id, p.order_id, 1::smallint AS kind, o.total_minor AS amount,
           o.currency, p.created_at AS at
      FROM stockcore.payments p JOIN stockcore.orders o ON o.order_id = p.order_id
    UNION ALL
    SELECT r.charge_id, r.order_id, 2::smallint, o.total_minor, o.currency, r.recorded_at
      FROM stockcore.payments_to_return r LEFT JOIN stockcore.orders o ON o.order_id = r.order_id
), theirs AS (
    SELECT t.charge_id, t.order_id, t.amount_minor, t.currency, t.created_at, t.read_at
      FROM stockcore.settlement_transactions t WHERE t.type = 'charge'
), fees AS (
    SELECT t.charge_id, min(t.created_at) AS created_at, max(t.read_at) AS read_at
      FROM stockcore.settlement_transactions t WHERE t.type = 'fee'
     GROUP BY t.charge_id
), subjects AS (
    SELECT charge_id FROM ours UNION SELECT charge_id FROM theirs
)
SELECT s.charge_id, coalesce(u.order_id, t.order_id), u.kind, u.amount, u.currency, u.at,
       o.payment_id, t.amount_minor, t.currency, t.created_at, t.read_at,
       f.created_at, f.read_at,
       EXISTS (SELECT FROM stockcore.payment_events e
                WHERE e.object_id = s.charge_id AND e.event_id LIKE 'feed:%'),
       l.statement_id, l.verdict
  FROM subjects s
  LEFT JOIN ours u ON u.charge_id = s.charge_id
  LEFT JOIN theirs t ON t.charge_id = s.charge_id
  LEFT JOIN fees f ON f.charge_id = s.charge_id
  LEFT JOIN stockcore.orders o ON o.order_id = coalesce(u.order_id, t.order_id)
  LEFT JOIN stockcore.latest_statements(1::smallint) l ON l.subject_id = s.charge_id
 WHERE l.statement_id IS NULL OR l.open
 ORDER BY s.charge_id
$$;

-- Each refund in the feed whose latest statement is missing or still open, or which the
-- provider failed (a refund_failure of it in the feed) while its latest statement does not
-- say so yet: with what stockcore owes back by it (NULL: nothing is owed), and failed_at,
-- when its refund_failure was created (NULL: it did not fail). What is owed is the
-- refund of ours the provider's id is bound to (stockcore.refunds); for one bound to none
-- (made by hand at the provider, or its send's answer not recorded yet), what its charge
-- owes back whole: its money to return, or the refund owed by the order it paid when the
-- order had no line refunded (a charge refunded in parts is matched refund by refund).
-- The function's result changes (failed_at): it is dropped and made again.
DROP FUNCTION IF EXISTS stockcore.refunds_to_state();
CREATE OR REPLACE FUNCTION stockcore.refunds_to_state()
RETURNS TABLE (refund_id text, charge_id text, order_id text, owed_amount bigint,
               owed_currency text, owed_at timestamptz, theirs_amount bigint,
               theirs_currency text, theirs_at timestamptz, settled_at timestamptz,
               failed_at timestamptz, latest bigint, latest_verdict smallint)
LANGUAGE sql STABLE SET jit = off AS $$
-- Every failure read once per call, not looked up per refund: the feed's transactions have
-- no index by source id, and a lookup per refund made each call quadratic in the feed.
WITH failures AS (
    SELECT x.source_id, min(x.created_at) AS created_at
      FROM stockcore.settlement_transactions x
     WHERE x.type = 'refund_failure'
     GROUP BY x.source_id
)
SELECT t.source_id, t.charge_id, t.order_id,
       coalesce(b.amount_minor, r.amount_minor, nullif(o.refund_owed_minor, 0)),
       coalesce(b.currency, r.currency, CASE WHEN o.refund_owed_minor > 0 THEN o.currency END),
       coalesce(b.created_at, r.recorded_at,
                CASE WHEN o.refund_owed_minor > 0 THEN o.updated_at END),
       -t.amount_minor, t.currency, t.created_at, t.read_at, f.created_at, l.statement_id,
       l.verdict
  FROM stockcore.settlement_transactions t
  LEFT JOIN stockcore.refunds b ON b.provider_refund_id = t.source_id
  LEFT JOIN stockcore.payments_to_return r ON r.charge_id = t.charge_id
  LEFT JOIN stockcore.payments p ON p.payment_id = t.charge_id
  LEFT JOIN stockcore.orders o ON o.order_id = p.order_id AND o.refunded_quantities IS NULL
  LEFT JOIN failures f ON f.source_id = t.source_id
  LEFT JOIN stockcore.latest_statements(2::smallint) l ON l.subject_id = t.source_id
 WHERE t.type = 'refund'
   AND (l.statement_id IS NULL OR l.open
        OR (f.created_at IS NOT NULL AND l.verdict <> 8))
 ORDER BY t.cursor
$$;

-- Write the statements the reconciler decided, each about a subject whose latest
-- statement was p_latest[i] (NULL: none): a line correcting it, an exception opened for a
-- discrepancy, and the corrected line's open exception closed as CORRECTED. A subject
-- whose latest statement is no longer p_latest[i] is skipped (it was stated meanwhile).
-- Returns a row per line written: its subject kind, its verdict and its lag_s, which the
-- reconciler's lag histogram observes (the lines written, as the table measures them).
-- The function's result changes (from the count of lines): it is dropped and made again.
DROP FUNCTION IF EXISTS stockcore.record_statements(
    text, smallint[], text[], text[], smallint[], bigint[], text[], bigint[], text[], boolean[],
    timestamptz[], bigint[]);
CREATE OR REPLACE FUNCTION stockcore.record_statements(
    p_feed text, p_kinds smallint[], p_subjects text[], p_orders text[], p_verdicts smallint[],
    p_ours_amounts bigint[], p_ours_currencies text[], p_theirs_amounts bigint[],
    p_theirs_currencies text[], p_recovered boolean[], p_fact_at timestamptz[],
    p_latest bigint[]
) RETURNS TABLE (stated_kind smallint, stated_verdict smallint, stated_lag_s double precision)
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    s        record;
    new_id   bigint;
BEGIN
    PERFORM FROM stockcore.settlement_cursor WHERE feed = p_feed FOR UPDATE;
    FOR s IN
        SELECT * FROM unnest(p_kinds, p_subjects, p_orders, p_verdicts, p_ours_amounts,
                             p_ours_currencies, p_theirs_amounts, p_theirs_currencies,
                             p_recovered, p_fact_at, p_latest)
                   AS u(kind, subject_id, order_id, verdict, ours_amount, ours_currency,
                        theirs_amount, theirs_currency, recovered, fact_at, latest)
    LOOP
        CONTINUE WHEN (SELECT max(x.statement_id) FROM stockcore.reconciliation_statements x
                        WHERE x.subject_kind = s.kind AND x.subject_id = s.subject_id)
                      IS DISTINCT FROM s.latest;
        INSERT INTO stockcore.reconciliation_statements
               (subject_kind, subject_id, order_id, verdict, ours_amount, ours_currency,
                theirs_amount, theirs_currency, recovered, corrects, fact_at)
        VALUES (s.kind, s.subject_id, s.order_id, s.verdict, s.ours_amount, s.ours_currency,
                s.theirs_amount, s.theirs_currency, s.recovered, s.latest, s.fact_at)
        RETURNING statement_id, lag_s INTO new_id, stated_lag_s;
        IF s.latest IS NOT NULL THEN
            UPDATE stockcore.reconciliation_exceptions
               SET resolution = 4, resolved_by = 'reconciler',
                   resolved_why = format('corrected by statement %s', new_id),
                   resolved_at = now()
             WHERE statement_id = s.latest AND resolution IS NULL;
        END IF;
        IF s.verdict <> 1 THEN
            INSERT INTO stockcore.reconciliation_exceptions (statement_id, reason)
            VALUES (new_id, s.verdict);
        END IF;
        stated_kind := s.kind;
        stated_verdict := s.verdict;
        RETURN NEXT;
    END LOOP;
END $$;

-- Resolve one exception, as a person decided: 1 ACCEPTED, 2 REFUNDED or 3 WRITTEN_OFF,
-- by whom and why (both required). Answers (payments.reconciler.matching.Resolved):
-- 0 resolved, 1 no such exception, 2 resolved already (the first resolution stands),
-- 3 refused: not a person's resolution, or no who or why. Locks the exception's row.
CREATE OR REPLACE FUNCTION stockcore.resolve_reconciliation_exception(
    p_exception_id bigint, p_resolution smallint, p_by text, p_why text
) RETURNS smallint
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    found_resolution smallint;
BEGIN
    IF p_resolution NOT BETWEEN 1 AND 3 OR coalesce(btrim(p_by), '') = ''
       OR coalesce(btrim(p_why), '') = '' THEN
        RETURN 3;
    END IF;
    SELECT resolution INTO found_resolution FROM stockcore.reconciliation_exceptions
     WHERE exception_id = p_exception_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 1;
    END IF;
    IF found_resolution IS NOT NULL THEN
        RETURN 2;
    END IF;
    UPDATE stockcore.reconciliation_exceptions
       SET resolution = p_resolution, resolved_by = p_by, resolved_why = p_why,
           resolved_at = now()
     WHERE exception_id = p_exception_id;
    RETURN 0;
END $$;

-- The statement lines a reader asks for by one id: those whose subject (a charge or a
-- provider refund) is p_id, and every line about an order p_id, oldest first, each with
-- the exception it opened; at most p_limit.
CREATE OR REPLACE FUNCTION stockcore.statement_lines(p_id text, p_limit int)
RETURNS TABLE (statement_id bigint, subject_kind smallint, subject_id text, order_id text,
               verdict smallint, ours_amount bigint, ours_currency text, theirs_amount bigint,
               theirs_currency text, recovered boolean, corrects bigint, fact_at timestamptz,
               stated_at timestamptz, lag_s double precision, exception_id bigint,
               resolution smallint)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT s.statement_id, s.subject_kind, s.subject_id, s.order_id, s.verdict, s.ours_amount,
           s.ours_currency, s.theirs_amount, s.theirs_currency, s.recovered, s.corrects,
           s.fact_at, s.stated_at, s.lag_s, e.exception_id, e.resolution
      FROM stockcore.reconciliation_statements s
      LEFT JOIN stockcore.reconciliation_exceptions e ON e.statement_id = s.statement_id
     WHERE s.subject_id = p_id OR s.order_id = p_id
     ORDER BY s.statement_id
     LIMIT p_limit
$$;

-- One page of exceptions after exception p_after, oldest first: the open ones unless
-- p_all, of verdict p_reason unless it is NULL, each with its statement line.
CREATE OR REPLACE FUNCTION stockcore.reconciliation_exception_page(
    p_all boolean, p_reason smallint, p_after bigint, p_limit int
) RETURNS TABLE (exception_id bigint, reason smallint, opened_at timestamptz,
                 resolution smallint, resolved_by text, resolved_why text,
                 resolved_at timestamptz, statement_id bigint, subject_kind smallint,
                 subject_id text, order_id text, verdict smallint, ours_amount bigint,
                 ours_currency text, theirs_amount bigint, theirs_currency text,
                 recovered boolean, corrects bigint, fact_at timestamptz,
                 stated_at timestamptz, lag_s double precision)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT e.exception_id, e.reason, e.opened_at, e.resolution, e.resolved_by,
           e.resolved_why, e.resolved_at, s.statement_id, s.subject_kind, s.subject_id,
           s.order_id, s.verdict, s.ours_amount, s.ours_currency, s.theirs_amount,
           s.theirs_currency, s.recovered, s.corrects, s.fact_at, s.stated_at, s.lag_s
      FROM stockcore.reconciliation_exceptions e
      JOIN stockcore.reconciliation_statements s ON s.statement_id = e.statement_id
     WHERE e.exception_id > p_after
       AND (p_all OR e.resolution IS NULL)
       AND (p_reason IS NULL OR e.reason = p_reason)
     ORDER BY e.exception_id
     LIMIT p_limit
$$;
