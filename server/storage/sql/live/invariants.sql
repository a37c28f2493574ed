-- What must always hold, written once: stock against adjustments, commits, live holds and
-- the movement ledger; orders against their holds, status history, payments and events;
-- the payment provider's charges, as the webhook receiver recorded them, against payments;
-- the money ledger against its facts and the settlement feed; the reconciler's statements
-- against their exceptions; the daily closes against each other and what they counted.
-- The test suite and the load runs call stockcore.invariant_violations() after they ran;
-- it returns one row per violation ("check" names the rule, subject the SKU, reservation
-- or order, detail what was found) and none when everything holds. It only reads, in one
-- statement, so every check sees the same snapshot.
--
-- Status values are those of server.domain: reservations 1 HELD, 2 COMMITTED, 3 RELEASED,
-- 4 EXPIRED; orders 1 PENDING_PAYMENT, 2 PAID, 3 SHIPPED, 4 IN_TRANSIT, 5 DELIVERED,
-- 6 CANCELLED, 7 EXPIRED; event type 1 is ORDER_CREATED, every other event is the one
-- stockcore.order_transitions names for the move.

-- Without JIT: the planner costs this statement on guesses (its CTEs, unnest and
-- generate_series), often above jit_above_cost, and compiling it took longer than running
-- it on a test database (hundreds of ms against one).
CREATE OR REPLACE FUNCTION stockcore.invariant_violations()
RETURNS TABLE ("check" text, subject text, detail text)
LANGUAGE sql STABLE SET jit = off AS $$
WITH lines AS (
    SELECT r.reservation_id, r.status, u.sku, u.quantity
      FROM stockcore.reservations r, unnest(r.skus, r.quantities) AS u(sku, quantity)
), held AS (
    SELECT sku, sum(quantity) AS units FROM lines WHERE status = 1 GROUP BY sku
), committed AS (
    SELECT sku, sum(quantity) AS units FROM lines WHERE status = 2 GROUP BY sku
), adjusted AS (
    SELECT sku, sum(applied_delta) AS units FROM stockcore.adjustments GROUP BY sku
), ledger AS (
    SELECT sku, sum(on_hand_delta) AS on_hand, sum(reserved_delta) AS reserved
      FROM stockcore.movements GROUP BY sku
), stock AS (
    -- Every SKU anything speaks of, so a ledger or hold without a stock row shows too.
    SELECT k.sku, s.on_hand, s.reserved,
           coalesce(a.units, 0) AS adjusted, coalesce(c.units, 0) AS committed,
           coalesce(h.units, 0) AS held,
           coalesce(l.on_hand, 0) AS ledger_on_hand, coalesce(l.reserved, 0) AS ledger_reserved
      FROM (SELECT sku FROM stockcore.stock UNION SELECT sku FROM adjusted
            UNION SELECT sku FROM lines UNION SELECT sku FROM ledger) AS k
      LEFT JOIN stockcore.stock s ON s.sku = k.sku
      LEFT JOIN adjusted a ON a.sku = k.sku
      LEFT JOIN committed c ON c.sku = k.sku
      LEFT JOIN held h ON h.sku = k.sku
      LEFT JOIN ledger l ON l.sku = k.sku
), orders AS (
    SELECT o.*, r.reservation_id IS NOT NULL AS has_hold, r.status AS hold_status,
           r.skus AS hold_skus, r.quantities AS hold_quantities, r.expires_at AS hold_expires_at,
           CASE o.status WHEN 1 THEN 1 WHEN 7 THEN 4
                         WHEN 6 THEN CASE WHEN o.payment_id IS NULL THEN 3 ELSE 2 END
                         ELSE 2 END AS wanted_hold_status
      FROM stockcore.orders o
      LEFT JOIN stockcore.reservations r ON r.reservation_id = o.order_id
), history AS (
    SELECT order_id, string_agg(version || ':' || to_status, ' ' ORDER BY version) AS found
      FROM stockcore.order_history GROUP BY order_id
), events AS (
    -- Status events only: refund events (types 8-10, refunds.sql) are checked apart.
    SELECT order_id, string_agg(order_version || ':' || type, ' ' ORDER BY order_version, type)
               AS found
      FROM stockcore.order_events WHERE type < 8 GROUP BY order_id
), wanted AS (
    -- Version v of an order is its v-th status: a history row to path[v], and an event
    -- for the move from path[v - 1] (ORDER_CREATED for the first).
    SELECT o.order_id,
           string_agg(v || ':' || o.path[v], ' ' ORDER BY v) AS history,
           string_agg(v || ':' || CASE WHEN v = 1 THEN '1' ELSE coalesce(t.event_type::text, '?') END,
                      ' ' ORDER BY v) AS events
      FROM stockcore.orders o
      CROSS JOIN LATERAL generate_series(1, cardinality(o.path)) AS v
      LEFT JOIN stockcore.order_transitions t
             ON v > 1 AND t.from_status = o.path[v - 1] AND t.to_status = o.path[v]
     GROUP BY o.order_id
)
-- Stock
SELECT 'on_hand_is_adjusted_less_committed', sku,
       format('on_hand %s, adjustments %s - committed %s = %s',
              coalesce(on_hand::text, 'missing'), adjusted, committed, adjusted - committed)
  FROM stock WHERE on_hand IS DISTINCT FROM adjusted - committed
UNION ALL
SELECT 'reserved_is_held', sku,
       format('reserved %s, units of HELD reservations %s', coalesce(reserved::text, 'missing'), held)
  FROM stock WHERE reserved IS DISTINCT FROM held
UNION ALL
SELECT 'stock_not_oversold', sku, format('on_hand %s, reserved %s', on_hand, reserved)
  FROM stock WHERE NOT (on_hand >= reserved AND reserved >= 0)
UNION ALL
SELECT 'ledger_matches_stock', sku,
       format('on_hand %s, reserved %s; movements sum to %s, %s',
              coalesce(on_hand::text, 'missing'), coalesce(reserved::text, 'missing'),
              ledger_on_hand, ledger_reserved)
  FROM stock
 WHERE (on_hand, reserved) IS DISTINCT FROM (ledger_on_hand, ledger_reserved)
UNION ALL
-- Each reservation's own movements sum to what it holds of each SKU while HELD, and to
-- nothing once it ended (lines change while HELD: SetReservationLine).
SELECT 'hold_matches_its_ledger', coalesce(r.reservation_id, l.reservation_id),
       format('%s: holds %s, its movements reserve %s', coalesce(r.sku, l.sku),
              coalesce(r.quantity, 0), coalesce(l.reserved, 0))
  FROM (SELECT reservation_id, sku, quantity FROM lines WHERE status = 1) r
  FULL JOIN (SELECT reservation_id, sku, sum(reserved_delta) AS reserved
               FROM stockcore.movements WHERE reservation_id IS NOT NULL
              GROUP BY reservation_id, sku) l
    ON l.reservation_id = r.reservation_id AND l.sku = r.sku
 WHERE coalesce(r.quantity, 0) <> coalesce(l.reserved, 0)
UNION ALL
-- The expiry sweep runs every fraction of a second; 2 s late means it is not running.
SELECT 'hold_not_overdue', reservation_id, format('HELD, expired at %s', expires_at)
  FROM stockcore.reservations WHERE status = 1 AND expires_at < now() - interval '2 seconds'
UNION ALL
-- Orders
SELECT 'order_has_hold', order_id, 'no reservation with the order''s id'
  FROM orders WHERE NOT has_hold
UNION ALL
SELECT 'order_matches_hold', order_id,
       format('order %s x %s until %s; hold %s x %s until %s', skus, quantities, payment_deadline,
              hold_skus, hold_quantities, hold_expires_at)
  FROM orders
 WHERE has_hold AND (skus, quantities, payment_deadline)
                    IS DISTINCT FROM (hold_skus, hold_quantities, hold_expires_at)
UNION ALL
SELECT 'order_status_matches_hold', order_id,
       format('order status %s (%s), hold status %s, expected %s', status,
              CASE WHEN payment_id IS NULL THEN 'unpaid' ELSE 'paid' END, hold_status,
              wanted_hold_status)
  FROM orders WHERE has_hold AND hold_status <> wanted_hold_status
UNION ALL
SELECT 'order_not_overdue', order_id, format('PENDING_PAYMENT, deadline %s', payment_deadline)
  FROM stockcore.orders WHERE status = 1 AND payment_deadline < now() - interval '2 seconds'
UNION ALL
SELECT 'order_history_complete', w.order_id,
       format('history (version:status) %s, path %s', coalesce(h.found, 'none'), w.history)
  FROM wanted w LEFT JOIN history h ON h.order_id = w.order_id
 WHERE h.found IS DISTINCT FROM w.history
UNION ALL
SELECT 'order_events_complete', w.order_id,
       format('events (version:type) %s, expected %s', coalesce(e.found, 'none'), w.events)
  FROM wanted w LEFT JOIN events e ON e.order_id = w.order_id
 WHERE e.found IS DISTINCT FROM w.events
UNION ALL
SELECT 'event_has_order', e.order_id, format('events %s of no order', e.found)
  FROM events e WHERE NOT EXISTS (SELECT FROM stockcore.orders o WHERE o.order_id = e.order_id)
UNION ALL
SELECT 'paid_order_has_payment', o.order_id,
       format('payment %s: %s; total %s, paid %s', o.payment_id,
              coalesce('of order ' || p.order_id || ', amount ' || p.amount_minor, 'missing'),
              o.total_minor, o.paid_minor)
  FROM stockcore.orders o LEFT JOIN stockcore.payments p ON p.payment_id = o.payment_id
 WHERE o.payment_id IS NOT NULL
   AND (p.order_id IS DISTINCT FROM o.order_id OR p.amount_minor <> o.total_minor
        OR o.paid_minor <> o.total_minor)
UNION ALL
SELECT 'payment_has_paid_order', p.payment_id, format('payment of order %s', p.order_id)
  FROM stockcore.payments p
 WHERE NOT EXISTS (SELECT FROM stockcore.orders o WHERE o.payment_id = p.payment_id)
UNION ALL
-- Only a paid order cancelled before shipping owes a refund as cancelled: all it was paid
-- but what its lines refunded owe (022_line_refunds.sql) ...
SELECT 'refund_owed', o.order_id,
       format('status %s, paid %s, lines refunded %s, refund owed %s', o.status, o.paid_minor,
              l.minor, o.refund_owed_minor)
  FROM stockcore.orders o
 CROSS JOIN LATERAL (SELECT coalesce(sum(u.q * u.p), 0) AS minor
                       FROM unnest(o.refunded_quantities, o.unit_prices) AS u(q, p)) l
 WHERE o.refund_owed_minor <> CASE WHEN o.status = 6 AND o.payment_id IS NOT NULL
                                   THEN o.paid_minor - l.minor ELSE 0 END
UNION ALL
-- ... each line's refunded units are those of its line refunds, no more than it has, of
-- an order that was paid ...
SELECT 'line_refunded_units', coalesce(l.order_id, f.order_id),
       format('%s: bought %s, refunded %s; line refunds of %s units (order %s)',
              coalesce(l.sku, f.sku), coalesce(l.quantity::text, 'no such line'), l.refunded,
              coalesce(f.units, 0), CASE WHEN l.paid THEN 'paid' ELSE 'unpaid' END)
  FROM (SELECT o.order_id, u.sku, u.quantity, coalesce(u.refunded, 0) AS refunded,
               o.payment_id IS NOT NULL AS paid
          FROM stockcore.orders o,
               unnest(o.skus, o.quantities, o.refunded_quantities) AS u(sku, quantity, refunded)) l
  FULL JOIN (SELECT order_id, sku, sum(quantity) AS units FROM stockcore.refunds
              WHERE reason = 3 GROUP BY order_id, sku) f
    ON f.order_id = l.order_id AND f.sku = l.sku
 WHERE l.order_id IS NULL OR l.refunded <> coalesce(f.units, 0) OR l.refunded > l.quantity
    OR (l.refunded > 0 AND NOT l.paid)
UNION ALL
-- ... each line refund owes its units at the line's price, to the charge that paid the
-- order ...
SELECT 'line_refund_of_its_line', f.refund_id,
       format('%s x %s: %s %s to %s; order %s', f.sku, f.quantity, f.amount_minor, f.currency,
              f.charge_id, coalesce('lines ' || o.skus::text || ' at ' || o.unit_prices::text
                                    || ', paid by ' || o.payment_id, 'missing'))
  FROM stockcore.refunds f
  LEFT JOIN stockcore.orders o ON o.order_id = f.order_id
 WHERE f.reason = 3
   AND (o.order_id IS NULL
        OR (f.amount_minor, f.currency, f.charge_id) IS DISTINCT FROM
           (f.quantity * o.unit_prices[array_position(o.skus, f.sku)], o.currency, o.payment_id))
UNION ALL
-- ... and all of an order's refunds never owe back more than it was paid.
SELECT 'refunds_within_paid', o.order_id,
       format('paid %s; refunds of %s', o.paid_minor, f.minor)
  FROM stockcore.orders o
  JOIN (SELECT order_id, sum(amount_minor) AS minor FROM stockcore.refunds
         WHERE reason IN (1, 3) GROUP BY order_id) f ON f.order_id = o.order_id
 WHERE f.minor > o.paid_minor
UNION ALL
-- ... and took its units back by one adjustment per line, its own (order_id, sku) ...
SELECT 'cancelled_units_returned', o.order_id,
       format('%s x %s: adjustment %s', u.sku, u.quantity,
              coalesce('of ' || a.applied_delta, 'missing'))
  FROM stockcore.orders o
 CROSS JOIN LATERAL unnest(o.skus, o.quantities) AS u(sku, quantity)
  LEFT JOIN stockcore.adjustments a ON a.order_id = o.order_id AND a.sku = u.sku
 WHERE o.status = 6 AND o.payment_id IS NOT NULL
   AND a.applied_delta IS DISTINCT FROM u.quantity
UNION ALL
-- ... and only such an order has adjustments of its own, one per line.
SELECT 'order_adjustment_of_cancelled_line', a.order_id,
       format('%s of %s: order %s', a.applied_delta, a.sku,
              coalesce('status ' || o.status || ', ' ||
                       CASE WHEN o.payment_id IS NULL THEN 'unpaid' ELSE 'paid' END ||
                       ', lines ' || o.skus::text, 'missing'))
  FROM stockcore.adjustments a
  LEFT JOIN stockcore.orders o ON o.order_id = a.order_id
 WHERE a.order_id IS NOT NULL
   AND (o.order_id IS NULL OR o.status <> 6 OR o.payment_id IS NULL OR NOT a.sku = ANY (o.skus))
UNION ALL
-- Payment provider events (outcome 1 PAID, 2 TO_RETURN: 016_payment_events.sql). A charge
-- recorded as paying its order is that order's payment ...
SELECT 'payment_event_paid_its_order', e.event_id,
       format('charge %s for order %s: %s', e.object_id, e.order_id,
              coalesce('the payment of order ' || p.order_id, 'no payment'))
  FROM stockcore.payment_events e
  LEFT JOIN stockcore.payments p ON p.payment_id = e.object_id
 WHERE e.outcome = 1 AND p.order_id IS DISTINCT FROM e.order_id
UNION ALL
-- ... one that paid nothing is money to return ...
SELECT 'payment_event_to_return_recorded', e.event_id,
       format('charge %s for order %s is not among the payments to return', e.object_id,
              e.order_id)
  FROM stockcore.payment_events e
 WHERE e.outcome = 2
   AND NOT EXISTS (SELECT FROM stockcore.payments_to_return r WHERE r.charge_id = e.object_id)
UNION ALL
-- ... and money to return never paid an order.
SELECT 'payment_to_return_paid_nothing', r.charge_id,
       format('to return (order %s, %s %s), yet the payment of order %s', r.order_id,
              r.amount_minor, r.currency, p.order_id)
  FROM stockcore.payments_to_return r
  JOIN stockcore.payments p ON p.payment_id = r.charge_id
UNION ALL
-- The money ledger (017_ledger.sql). Every order ever paid (an amount above 0) has
-- exactly one ORDER_PAID transfer, of what it was paid, in its currency, and no other
-- order has one ...
SELECT 'ledger_order_paid', coalesce(o.order_id, t.order_id),
       format('paid %s %s; posted %s', coalesce(o.paid_minor::text, 'nothing'), o.currency,
              coalesce(t.posted, 'nothing'))
  FROM (SELECT * FROM stockcore.orders WHERE payment_id IS NOT NULL AND paid_minor > 0) o
  FULL JOIN (SELECT order_id, count(*) AS n, min(amount_minor) AS amount, min(currency) AS currency,
                    string_agg(amount_minor || ' ' || currency, ', ') AS posted
               FROM stockcore.ledger_transfers WHERE kind = 1 GROUP BY order_id) t
    ON t.order_id = o.order_id
 WHERE o.order_id IS NULL OR t.order_id IS NULL OR t.n <> 1
    OR (t.amount, t.currency) IS DISTINCT FROM (o.paid_minor, o.currency)
UNION ALL
-- ... every refund owed, one REFUND_OWED of that amount, and nothing else ...
SELECT 'ledger_refund_owed', coalesce(o.order_id, t.order_id),
       format('owed %s %s; posted %s', coalesce(o.refund_owed_minor::text, 'nothing'),
              o.currency, coalesce(t.posted, 'nothing'))
  FROM (SELECT * FROM stockcore.orders WHERE refund_owed_minor > 0) o
  FULL JOIN (SELECT order_id, count(*) AS n, min(amount_minor) AS amount, min(currency) AS currency,
                    string_agg(amount_minor || ' ' || currency, ', ') AS posted
               FROM stockcore.ledger_transfers WHERE kind = 2 GROUP BY order_id) t
    ON t.order_id = o.order_id
 WHERE o.order_id IS NULL OR t.order_id IS NULL OR t.n <> 1
    OR (t.amount, t.currency) IS DISTINCT FROM (o.refund_owed_minor, o.currency)
UNION ALL
-- ... every line refund, one LINE_REFUND_OWED of its amount, and nothing else ...
SELECT 'ledger_line_refund_owed', coalesce(f.source_id, t.source_id),
       format('line refund of order %s: %s; posted %s', coalesce(f.order_id, t.order_id),
              coalesce(f.amount_minor || ' ' || f.currency, 'none'),
              coalesce(t.amount_minor || ' ' || t.currency || ' for order ' || t.order_id,
                       'nothing'))
  FROM (SELECT * FROM stockcore.refunds WHERE reason = 3) f
  FULL JOIN (SELECT * FROM stockcore.ledger_transfers WHERE kind = 9) t
    ON t.source_id = f.source_id
 WHERE f.source_id IS NULL OR t.source_id IS NULL
    OR (t.amount_minor, t.currency, t.order_id) IS DISTINCT FROM
       (f.amount_minor, f.currency, f.order_id)
UNION ALL
-- ... every charge to return, one CHARGE_TO_RETURN of its amount ...
SELECT 'ledger_charge_to_return', coalesce(r.charge_id, t.source_id),
       format('to return %s %s; posted %s', coalesce(r.amount_minor::text, 'nothing'),
              r.currency, coalesce(t.amount_minor || ' ' || t.currency, 'nothing'))
  FROM stockcore.payments_to_return r
  FULL JOIN (SELECT * FROM stockcore.ledger_transfers WHERE kind = 3) t ON t.source_id = r.charge_id
 WHERE r.charge_id IS NULL OR t.source_id IS NULL
    OR (t.amount_minor, t.currency) IS DISTINCT FROM (r.amount_minor, r.currency)
UNION ALL
-- ... and every transfer moves money between the accounts its kind names.
SELECT 'ledger_transfer_accounts', t.transfer_id::text,
       format('kind %s from %s to %s', t.kind, t.debit_account, t.credit_account)
  FROM stockcore.ledger_transfers t
 WHERE (t.kind, t.debit_account, t.credit_account) NOT IN
       ((1, 1, 2), (2, 3, 4), (3, 1, 8), (4, 5, 1), (5, 4, 5), (5, 8, 5), (6, 6, 5), (7, 7, 5),
        (8, 5, 4), (8, 5, 8), (9, 3, 4))
UNION ALL
-- The settlement feed as the reconciler read it (018_reconciliation.sql). Every transfer
-- posted from the feed is one of its transactions, of its amount and currency ...
SELECT 'feed_transfer_has_its_transaction', t.transfer_id::text,
       format('kind %s of %s %s from %s: %s', t.kind, t.amount_minor, t.currency, t.source_id,
              coalesce(f.type || ' of ' || f.amount_minor || ' ' || f.currency, 'not in the feed'))
  FROM stockcore.ledger_transfers t
  LEFT JOIN stockcore.settlement_transactions f ON f.txn_id = t.source_id
 WHERE t.kind BETWEEN 4 AND 8
   AND (f.txn_id IS NULL OR (f.type, abs(f.amount_minor), f.currency) IS DISTINCT FROM
        (CASE t.kind WHEN 4 THEN 'charge' WHEN 5 THEN 'refund' WHEN 6 THEN 'fee'
                     WHEN 7 THEN 'payout' ELSE 'refund_failure' END, t.amount_minor, t.currency))
UNION ALL
-- ... every transaction read that moved money is posted ...
SELECT 'feed_transaction_posted', f.txn_id,
       format('%s of %s %s, cursor %s: no transfer', f.type, f.amount_minor, f.currency, f.cursor)
  FROM stockcore.settlement_transactions f
 WHERE f.amount_minor <> 0
   AND NOT EXISTS (SELECT FROM stockcore.ledger_transfers t
                    WHERE t.kind = CASE f.type WHEN 'charge' THEN 4 WHEN 'refund' THEN 5
                                               WHEN 'fee' THEN 6 WHEN 'payout' THEN 7 ELSE 8 END
                      AND t.source_id = f.txn_id)
UNION ALL
-- ... and the cursor is the last transaction read, every one before it read too: it never
-- passed a transaction it did not record and post.
SELECT 'settlement_cursor_at_last_read', c.feed,
       format('cursor %s; %s transactions read, the last at cursor %s', c.cursor, count(f.txn_id),
              coalesce(max(f.cursor), 0))
  FROM stockcore.settlement_cursor c LEFT JOIN stockcore.settlement_transactions f ON true
 GROUP BY c.feed, c.cursor
HAVING c.cursor <> coalesce(max(f.cursor), 0) OR count(f.txn_id) <> coalesce(max(f.cursor), 0)
UNION ALL
-- A statement corrects an earlier one about the same subject ...
SELECT 'statement_corrects_its_subject', s.statement_id::text,
       format('about %s %s, corrects statement %s about %s %s', s.subject_kind, s.subject_id,
              s.corrects, c.subject_kind, c.subject_id)
  FROM stockcore.reconciliation_statements s
  JOIN stockcore.reconciliation_statements c ON c.statement_id = s.corrects
 WHERE (c.subject_kind, c.subject_id) IS DISTINCT FROM (s.subject_kind, s.subject_id)
    OR c.statement_id >= s.statement_id
UNION ALL
-- ... so a subject's statements form one line: each after its first corrects the one
-- before (corrects is unique), and a subject stated again from scratch, as a reconciler
-- that repeated its work after a crash would, shows here ...
SELECT 'statement_corrects_the_one_before', s.statement_id::text,
       format('about %s %s, verdict %s, after statement %s of verdict %s without correcting it',
              s.subject_kind, s.subject_id, s.verdict, s.before, s.before_verdict)
  FROM (SELECT statement_id, subject_kind, subject_id, verdict, corrects,
               lag(statement_id) OVER subject AS before, lag(verdict) OVER subject AS before_verdict
          FROM stockcore.reconciliation_statements
        WINDOW subject AS (PARTITION BY subject_kind, subject_id ORDER BY statement_id)) s
 WHERE s.before IS NOT NULL AND s.corrects IS DISTINCT FROM s.before
UNION ALL
-- ... each discrepancy has its exception, of its verdict, and a match none ...
SELECT 'discrepancy_has_exception', s.statement_id::text,
       format('verdict %s, exception %s', s.verdict,
              coalesce('of reason ' || e.reason, 'none'))
  FROM stockcore.reconciliation_statements s
  LEFT JOIN stockcore.reconciliation_exceptions e ON e.statement_id = s.statement_id
 WHERE CASE WHEN s.verdict = 1 THEN e.exception_id IS NOT NULL
            ELSE e.reason IS DISTINCT FROM s.verdict END
UNION ALL
-- ... and the exception of a corrected statement is resolved.
SELECT 'corrected_exception_resolved', e.exception_id::text,
       format('statement %s corrected by statement %s, exception open', e.statement_id,
              s.statement_id)
  FROM stockcore.reconciliation_exceptions e
  JOIN stockcore.reconciliation_statements s ON s.corrects = e.statement_id
 WHERE e.resolution IS NULL
UNION ALL
-- Refunds (019_refunds.sql). Every refund owed by a cancelled paid order is exactly one
-- refund of that amount, in its currency, to the charge that paid it, and no other order
-- has one ...
SELECT 'refund_of_refund_owed', coalesce(o.order_id, f.source_id),
       format('owed %s %s by charge %s; refunds %s', coalesce(o.refund_owed_minor::text, 'nothing'),
              o.currency, o.payment_id, coalesce(f.made, 'none'))
  FROM (SELECT * FROM stockcore.orders WHERE refund_owed_minor > 0) o
  FULL JOIN (SELECT source_id, count(*) AS n, min(amount_minor) AS amount, min(currency) AS currency,
                    min(charge_id) AS charge_id,
                    string_agg(amount_minor || ' ' || currency || ' to ' || charge_id, ', ') AS made
               FROM stockcore.refunds WHERE reason = 1 GROUP BY source_id) f
    ON f.source_id = o.order_id
 WHERE o.order_id IS NULL OR f.source_id IS NULL OR f.n <> 1
    OR (f.amount, f.currency, f.charge_id) IS DISTINCT FROM (o.refund_owed_minor, o.currency, o.payment_id)
UNION ALL
-- ... every payment to return (but one returned before refunds were rows) is one refund
-- of its amount, and it is returned exactly when that refund is REFUNDED ...
SELECT 'refund_of_payment_to_return', coalesce(p.charge_id, f.source_id),
       format('to return %s %s, returned %s; refund %s',
              coalesce(p.amount_minor::text, 'nothing'), p.currency,
              coalesce(p.returned_at::text, 'no'),
              coalesce(f.amount_minor || ' ' || f.currency || ' state ' || f.state, 'none'))
  FROM stockcore.payments_to_return p
  FULL JOIN (SELECT * FROM stockcore.refunds WHERE reason = 2) f ON f.source_id = p.charge_id
 WHERE (f.source_id IS NULL AND p.returned_at IS NULL) OR p.charge_id IS NULL
    OR (f.source_id IS NOT NULL
        AND ((f.amount_minor, f.currency) IS DISTINCT FROM (p.amount_minor, p.currency)
             OR (p.returned_at IS NOT NULL) <> (f.state = 3)))
UNION ALL
-- ... a refund the provider accepted or settled has the provider's refund id ...
SELECT 'refund_has_provider_id', refund_id, format('state %s without the provider''s id', state)
  FROM stockcore.refunds
 WHERE state IN (2, 3) AND provider_refund_id IS NULL
UNION ALL
-- ... and its order has one event per step it took: REFUND_REQUESTED once sent, then
-- REFUNDED or REFUND_FAILED once settled.
SELECT 'refund_events_complete', f.refund_id,
       format('state %s, events %s', f.state, coalesce(e.found, 'none'))
  FROM stockcore.refunds f
  JOIN stockcore.orders o ON o.order_id = f.order_id
  LEFT JOIN (SELECT split_part(split_part(event_id, '/refund/', 2), '/', 1) AS refund_id,
                    string_agg(type::text, ' ' ORDER BY type) AS found
               FROM stockcore.order_events WHERE type >= 8
              GROUP BY 1) e
    ON e.refund_id = f.refund_id
 WHERE NOT (coalesce(e.found, '') = ANY (CASE f.state WHEN 1 THEN ARRAY['']
                                                     WHEN 2 THEN ARRAY['8']
                                                     WHEN 3 THEN ARRAY['8 9']
                                                     ELSE ARRAY['10', '8 10'] END))
UNION ALL
-- The provider balance's daily closes (020_daily_close.sql): a currency's days close one
-- after another, each opening at the previous day's closing (the first at 0) ...
SELECT 'daily_close_continuity', c.currency || ' ' || c.day,
       format('opening %s, the day before %s', c.opening_minor,
              coalesce(p.closing_minor::text, 'not closed'))
  FROM stockcore.daily_closes c
  LEFT JOIN stockcore.daily_closes p ON p.currency = c.currency AND p.day = c.day - 1
 WHERE (p.day IS NOT NULL AND c.opening_minor <> p.closing_minor)
    OR (p.day IS NULL AND (c.opening_minor <> 0
                           OR EXISTS (SELECT FROM stockcore.daily_closes e
                                       WHERE e.currency = c.currency AND e.day < c.day)))
UNION ALL
-- ... and its figures are what the transfers it counted add up to, as when it closed.
SELECT 'daily_close_counts_its_items', c.currency || ' ' || c.day,
       format('figures %s/%s/%s/%s/%s, items %s/%s/%s/%s/%s', c.charges_minor,
              c.refunds_minor, c.fees_minor, c.payouts_minor, c.refund_failures_minor,
              i.charges, i.refunds, i.fees, i.payouts, i.failures)
  FROM stockcore.daily_closes c
  LEFT JOIN (SELECT i.currency, i.day,
                    coalesce(sum(t.amount_minor) FILTER (WHERE t.kind = 4), 0) AS charges,
                    coalesce(sum(t.amount_minor) FILTER (WHERE t.kind = 5), 0) AS refunds,
                    coalesce(sum(t.amount_minor) FILTER (WHERE t.kind = 6), 0) AS fees,
                    coalesce(sum(t.amount_minor) FILTER (WHERE t.kind = 7), 0) AS payouts,
                    coalesce(sum(t.amount_minor) FILTER (WHERE t.kind = 8), 0) AS failures
               FROM stockcore.daily_close_items i
               JOIN stockcore.ledger_transfers t ON t.transfer_id = i.transfer_id
              GROUP BY 1, 2) i ON i.currency = c.currency AND i.day = c.day
 WHERE (c.charges_minor, c.refunds_minor, c.fees_minor, c.payouts_minor,
        c.refund_failures_minor)
       IS DISTINCT FROM (coalesce(i.charges, 0), coalesce(i.refunds, 0), coalesce(i.fees, 0),
                         coalesce(i.payouts, 0), coalesce(i.failures, 0))
UNION ALL
-- Cursors are unique: gap-free from 1 means as many as the highest.
SELECT 'event_cursors_gap_free', 'order_events',
       format('%s cursors from %s to %s', count(cursor), min(cursor), max(cursor))
  FROM stockcore.order_events
HAVING count(cursor) > 0 AND (min(cursor) <> 1 OR max(cursor) <> count(cursor))
ORDER BY 1, 2
$$;

-- The money ledger against the facts it records, per currency, in minor units: for each
-- kind of transfer (017_ledger.sql, 018_reconciliation.sql), what the transfers of that
-- kind add up to less what their facts add up to (the orders paid, the refunds owed by
-- cancels and by line refunds, the charges to return, the settlement feed's transactions
-- of each type), those differences
-- taken whole and summed. 0 in every currency while each fact has its transfer and each
-- transfer its fact; the ledger_* and feed_* checks of invariant_violations() then say
-- which. (The accounts' balances of a currency sum to 0 whatever is posted, since a
-- transfer debits what it credits: that sum proves nothing, and is not this.) Facts and
-- their transfers commit together and this is one statement, so a payment in flight never
-- shows. It reads whole tables: the reconciler runs it on a period of its own
-- (STOCKCORE_RECONCILE_LEDGER_CHECK_INTERVAL), not at every pass.
CREATE OR REPLACE FUNCTION stockcore.ledger_imbalance()
RETURNS TABLE (currency text, imbalance_minor bigint)
LANGUAGE sql STABLE SET jit = off AS $$
WITH posted AS (
    SELECT t.currency, t.kind, sum(t.amount_minor) AS amount
      FROM stockcore.ledger_transfers t GROUP BY t.currency, t.kind
), facts AS (
    SELECT o.currency, 1 AS kind, sum(o.paid_minor) AS amount
      FROM stockcore.orders o WHERE o.payment_id IS NOT NULL AND o.paid_minor > 0
     GROUP BY o.currency
    UNION ALL
    SELECT o.currency, 2, sum(o.refund_owed_minor)
      FROM stockcore.orders o WHERE o.refund_owed_minor > 0 GROUP BY o.currency
    UNION ALL
    SELECT r.currency, 3, sum(r.amount_minor)
      FROM stockcore.payments_to_return r GROUP BY r.currency
    UNION ALL
    SELECT f.currency, 9, sum(f.amount_minor)
      FROM stockcore.refunds f WHERE f.reason = 3 GROUP BY f.currency
    UNION ALL
    SELECT f.currency,
           CASE f.type WHEN 'charge' THEN 4 WHEN 'refund' THEN 5 WHEN 'fee' THEN 6
                       WHEN 'payout' THEN 7 ELSE 8 END,
           sum(abs(f.amount_minor))
      FROM stockcore.settlement_transactions f GROUP BY f.currency, f.type
)
SELECT coalesce(p.currency, f.currency),
       sum(abs(coalesce(p.amount, 0) - coalesce(f.amount, 0)))::bigint
  FROM posted p
  FULL JOIN facts f ON f.currency = p.currency AND f.kind = p.kind
 GROUP BY 1
 ORDER BY 1
$$;
