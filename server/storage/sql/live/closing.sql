-- The provider balance's daily close (020_daily_close.sql), per currency and UTC day:
-- closing = opening + charges - refunds - fees - payouts + refund failures, from the
-- provider-side ledger transfers (kinds 4-8, posted from the settlement feed by
-- live/reconciliation.sql). A transfer belongs to the UTC day of its provider time (its
-- settlement transaction's created_at) and is counted once: in that day, or, when that
-- day had closed before it was posted, in the next day closed (a late item, which keeps
-- the day it belongs to). Days close one after another, each once (the reconciler closes
-- a day once it is past and a settle margin more); opening is the previous day's closing.
-- close_day locks the settlement_cursor row first (lock order: the top of orders.sql,
-- rank 8), as the feed's posting does, so no transfer is posted while a day closes.

-- Every provider transfer of a currency no closed day counted yet: its provider day and
-- its effect on the provider balance (a charge and a failed refund +, the rest -).
CREATE OR REPLACE FUNCTION stockcore.uncounted_provider_transfers(p_currency text)
RETURNS TABLE (transfer_id bigint, txn_id text, type text, kind smallint,
               signed_minor bigint, belongs_to date)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT t.transfer_id, t.source_id, s.type, t.kind,
           CASE WHEN t.kind IN (4, 8) THEN t.amount_minor ELSE -t.amount_minor END,
           (coalesce(s.created_at, t.posted_at) AT TIME ZONE 'UTC')::date
      FROM stockcore.ledger_transfers t
      LEFT JOIN stockcore.settlement_transactions s ON s.txn_id = t.source_id
     WHERE t.kind BETWEEN 4 AND 8 AND t.currency = p_currency
       AND NOT EXISTS (SELECT FROM stockcore.daily_close_items i
                        WHERE i.transfer_id = t.transfer_id)
$$;

-- The last closed day of a currency (NULL: none) and its closing.
CREATE OR REPLACE FUNCTION stockcore.last_daily_close(p_currency text,
    OUT day date, OUT closing_minor bigint)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT c.day, c.closing_minor FROM stockcore.daily_closes c
     WHERE c.currency = p_currency ORDER BY c.day DESC LIMIT 1
$$;

-- A currency's figures of a day: as closed, or as they stand while it is open (what its
-- close would count now: the transfers of that day, and, for the day after the last
-- closed one, the late ones). No row for a currency the provider never moved.
CREATE OR REPLACE FUNCTION stockcore.daily_close_figures(p_currency text, p_day date)
RETURNS TABLE (closed boolean, opening_minor bigint, charges_minor bigint,
               refunds_minor bigint, fees_minor bigint, payouts_minor bigint,
               refund_failures_minor bigint, closing_minor bigint, closed_at timestamptz,
               closed_by text)
LANGUAGE sql STABLE SET jit = off AS $$
WITH last AS (
    SELECT * FROM stockcore.last_daily_close(p_currency)
), uncounted AS (
    SELECT u.* FROM stockcore.uncounted_provider_transfers(p_currency) u
), open_day AS (
    -- The transfers an open p_day counts, and those of the open days before it.
    SELECT
        coalesce(sum(u.signed_minor) FILTER (
            WHERE u.belongs_to < p_day AND (l.day IS NULL OR u.belongs_to > l.day)), 0) AS before,
        coalesce(sum(u.signed_minor) FILTER (WHERE u.kind = 4 AND c.counted), 0) AS charges,
        coalesce(-sum(u.signed_minor) FILTER (WHERE u.kind = 5 AND c.counted), 0) AS refunds,
        coalesce(-sum(u.signed_minor) FILTER (WHERE u.kind = 6 AND c.counted), 0) AS fees,
        coalesce(-sum(u.signed_minor) FILTER (WHERE u.kind = 7 AND c.counted), 0) AS payouts,
        coalesce(sum(u.signed_minor) FILTER (WHERE u.kind = 8 AND c.counted), 0) AS failures
      FROM last l
      LEFT JOIN uncounted u ON true
      CROSS JOIN LATERAL (SELECT u.belongs_to = p_day
                                 OR (p_day = l.day + 1 AND u.belongs_to <= l.day) AS counted) c
)
SELECT true, d.opening_minor, d.charges_minor, d.refunds_minor, d.fees_minor,
       d.payouts_minor, d.refund_failures_minor, d.closing_minor, d.closed_at, d.closed_by
  FROM stockcore.daily_closes d
 WHERE d.currency = p_currency AND d.day = p_day
UNION ALL
SELECT false, o.opening, o.charges, o.refunds, o.fees, o.payouts, o.failures,
       o.opening + o.charges - o.refunds - o.fees - o.payouts + o.failures, NULL, NULL
  FROM (SELECT CASE WHEN l.day IS NOT NULL AND p_day < l.day THEN 0
                    ELSE coalesce(l.closing_minor, 0) + x.before END AS opening,
               x.charges, x.refunds, x.fees, x.payouts, x.failures
          FROM last l, open_day x) o
 WHERE NOT EXISTS (SELECT FROM stockcore.daily_closes d
                    WHERE d.currency = p_currency AND d.day = p_day)
   AND (EXISTS (SELECT FROM stockcore.daily_closes d WHERE d.currency = p_currency)
        OR EXISTS (SELECT FROM uncounted))
$$;

-- The late items of a day: those it counted (closed) or would count (open) that belong
-- to an earlier day, by transfer.
CREATE OR REPLACE FUNCTION stockcore.daily_close_late_items(p_currency text, p_day date)
RETURNS TABLE (transfer_id bigint, txn_id text, type text, amount_minor bigint,
               belongs_to date)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT i.transfer_id, t.source_id, s.type,
           CASE WHEN t.kind IN (4, 8) THEN t.amount_minor ELSE -t.amount_minor END,
           i.belongs_to
      FROM stockcore.daily_close_items i
      JOIN stockcore.ledger_transfers t ON t.transfer_id = i.transfer_id
      LEFT JOIN stockcore.settlement_transactions s ON s.txn_id = t.source_id
     WHERE i.currency = p_currency AND i.day = p_day AND i.belongs_to < p_day
    UNION ALL
    SELECT u.transfer_id, u.txn_id, u.type, u.signed_minor, u.belongs_to
      FROM stockcore.last_daily_close(p_currency) l,
           stockcore.uncounted_provider_transfers(p_currency) u
     WHERE p_day = l.day + 1 AND u.belongs_to <= l.day
     ORDER BY 1
$$;

-- Close a currency's day, as p_by (the reconciler). Answers: 0 closed, 1 closed already
-- (the first close stands), 2 not the next day to close (the day after the last closed
-- one, or for a currency's first close the first day of its transfers), 3 not over yet
-- (UTC), 4 nothing to close (the provider never moved this currency).
CREATE OR REPLACE FUNCTION stockcore.close_day(p_currency text, p_day date, p_by text)
RETURNS smallint
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    last_day  date;
    last_closing bigint;
    first_day date;
BEGIN
    PERFORM FROM stockcore.settlement_cursor WHERE feed = 'provider' FOR UPDATE;
    IF EXISTS (SELECT FROM stockcore.daily_closes WHERE currency = p_currency AND day = p_day) THEN
        RETURN 1;
    END IF;
    IF p_day >= (now() AT TIME ZONE 'UTC')::date THEN
        RETURN 3;
    END IF;
    SELECT l.day, l.closing_minor INTO last_day, last_closing
      FROM stockcore.last_daily_close(p_currency) l;
    IF last_day IS NULL THEN
        SELECT min(u.belongs_to) INTO first_day
          FROM stockcore.uncounted_provider_transfers(p_currency) u;
        IF first_day IS NULL THEN
            RETURN 4;
        END IF;
        IF p_day <> first_day THEN
            RETURN 2;
        END IF;
    ELSIF p_day <> last_day + 1 THEN
        RETURN 2;
    END IF;
    -- One statement, one snapshot: the day's figures are the sums of the items it records.
    WITH items AS (
        SELECT u.* FROM stockcore.uncounted_provider_transfers(p_currency) u
         WHERE u.belongs_to = p_day OR u.belongs_to <= last_day
    ), figures AS (
        SELECT coalesce(last_closing, 0) AS opening,
               coalesce(sum(signed_minor) FILTER (WHERE kind = 4), 0) AS charges,
               coalesce(-sum(signed_minor) FILTER (WHERE kind = 5), 0) AS refunds,
               coalesce(-sum(signed_minor) FILTER (WHERE kind = 6), 0) AS fees,
               coalesce(-sum(signed_minor) FILTER (WHERE kind = 7), 0) AS payouts,
               coalesce(sum(signed_minor) FILTER (WHERE kind = 8), 0) AS failures
          FROM items
    ), closed AS (
        INSERT INTO stockcore.daily_closes
               (currency, day, opening_minor, charges_minor, refunds_minor, fees_minor,
                payouts_minor, refund_failures_minor, closing_minor, closed_by)
        SELECT p_currency, p_day, f.opening, f.charges, f.refunds, f.fees, f.payouts,
               f.failures,
               f.opening + f.charges - f.refunds - f.fees - f.payouts + f.failures, p_by
          FROM figures f
        RETURNING day
    )
    INSERT INTO stockcore.daily_close_items (transfer_id, currency, day, belongs_to)
    SELECT i.transfer_id, p_currency, c.day, i.belongs_to FROM items i, closed c;
    RETURN 0;
END $$;

-- Close every day that ended before p_before, of every currency the provider moved, one
-- after another from the day after each currency's last close (or its first day), as
-- p_by. Returns the days closed.
CREATE OR REPLACE FUNCTION stockcore.close_due_days(p_before timestamptz, p_by text)
RETURNS TABLE (currency text, day date)
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    cur       text;
    next_day  date;
    answer    smallint;
BEGIN
    PERFORM FROM stockcore.settlement_cursor WHERE feed = 'provider' FOR UPDATE;
    FOR cur IN
        SELECT DISTINCT t.currency FROM stockcore.ledger_transfers t
         WHERE t.kind BETWEEN 4 AND 8 ORDER BY 1
    LOOP
        SELECT l.day + 1 INTO next_day FROM stockcore.last_daily_close(cur) l;
        IF next_day IS NULL THEN
            SELECT min(u.belongs_to) INTO next_day
              FROM stockcore.uncounted_provider_transfers(cur) u;
        END IF;
        WHILE next_day IS NOT NULL
              AND (next_day + 1)::timestamp AT TIME ZONE 'UTC' <= p_before LOOP
            answer := stockcore.close_day(cur, next_day, p_by);
            EXIT WHEN answer <> 0;
            currency := cur;
            day := next_day;
            RETURN NEXT;
            next_day := next_day + 1;
        END LOOP;
    END LOOP;
END $$;
