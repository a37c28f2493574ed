-- Carts. A checkout page holds its cart's stock by one plain reservation, which its
-- customer's token takes (Reserve), changes line by line (SetReservationLine) and, at
-- checkout, makes into the order's hold (CreateOrder with reservation_id) or releases.
-- The order functions and the hold functions that decide these are in live/.

-- The customer a reservation is held for: the customer of the token that made it (a
-- checkout page's), or of the order whose hold it is; NULL for a service's reservation.
-- Only that customer's token may change or release it, and it becomes only that
-- customer's order.
ALTER TABLE stockcore.reservations ADD COLUMN customer_id text;

-- Every SetReservationLine applied: its change_id (the caller's idempotency key, one
-- namespace of its own), what makes two requests with one change_id the same request
-- (the reservation, the SKU, the quantity and the time-to-live), and who made it. A
-- refused change leaves no row: a retry is decided again.
CREATE TABLE stockcore.reservation_changes (
    change_id      text        PRIMARY KEY,
    reservation_id text        NOT NULL,
    fingerprint    bytea       NOT NULL,
    caller         text        NOT NULL,
    created_at     timestamptz NOT NULL
);

-- One SetReservationLine's outcome; codes are set_reservation_lines' (live/inventory.sql).
-- reservation is the reservation after the call (NULL when unknown); available, for a
-- short SKU, the units the reservation could hold of it (what it holds and what is
-- available), NULL for an unknown SKU.
CREATE TYPE stockcore.line_result AS (
    code        smallint,
    reservation stockcore.reservations,
    available   bigint
);

-- One CreateOrder from a held reservation's outcome; codes are order_holds'
-- (live/orders.sql). ord is the order (created, or as it is on a repeat), hold the
-- reservation as found, which says why a refused one could not become the order.
CREATE TYPE stockcore.hold_order_result AS (
    code smallint,
    ord  stockcore.orders,
    hold stockcore.reservations
);
