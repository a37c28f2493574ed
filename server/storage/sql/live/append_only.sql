-- Rows that never change once written: the stock ledger (stockcore.movements), the money
-- ledger (stockcore.ledger_transfers), the orders' status history, the fulfilments'
-- history, the reconciler's statements, and the order events, which only get their cursor
-- (once) and their publication, and the reconciliation exceptions, which only get their
-- resolution (once). Triggers refuse anything else, whoever runs the statement.

CREATE OR REPLACE FUNCTION stockcore.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE TRIGGER movements_append_only BEFORE UPDATE OR DELETE ON stockcore.movements
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();
CREATE OR REPLACE TRIGGER ledger_transfers_append_only BEFORE UPDATE OR DELETE ON stockcore.ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();
CREATE OR REPLACE TRIGGER order_history_append_only BEFORE UPDATE OR DELETE ON stockcore.order_history
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();
CREATE OR REPLACE TRIGGER fulfilment_history_append_only BEFORE UPDATE OR DELETE ON stockcore.fulfilment_history
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();

-- An event never changes once written; only its cursor (once) and published_at are set.
-- Its content is the order and its change as jsonb (body) or, in rows written before
-- body existed, the serialized stockcore.v1.OrderEvent (payload).
CREATE OR REPLACE FUNCTION stockcore.keep_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'order events are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.payload IS DISTINCT FROM OLD.payload OR NEW.body IS DISTINCT FROM OLD.body
       OR NEW.event_id IS DISTINCT FROM OLD.event_id
       OR NEW.order_id IS DISTINCT FROM OLD.order_id OR NEW.type IS DISTINCT FROM OLD.type
       OR (OLD.cursor IS NOT NULL AND NEW.cursor IS DISTINCT FROM OLD.cursor) THEN
        RAISE EXCEPTION 'an order event is immutable but for its cursor and publication'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER order_events_immutable BEFORE UPDATE OR DELETE ON stockcore.order_events
    FOR EACH ROW EXECUTE FUNCTION stockcore.keep_event();

-- The reconciler's statements never change; a later finding is a new line naming the one
-- it corrects (live/reconciliation.sql).
CREATE OR REPLACE TRIGGER reconciliation_statements_append_only
    BEFORE UPDATE OR DELETE ON stockcore.reconciliation_statements
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();

-- An exception is never deleted, and only resolved, once: its resolution columns go from
-- NULL to set, and nothing else of it changes.
CREATE OR REPLACE FUNCTION stockcore.keep_exception() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'reconciliation exceptions are never deleted'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.resolution IS NOT NULL OR NEW.exception_id IS DISTINCT FROM OLD.exception_id
       OR NEW.statement_id IS DISTINCT FROM OLD.statement_id
       OR NEW.reason IS DISTINCT FROM OLD.reason OR NEW.opened_at IS DISTINCT FROM OLD.opened_at THEN
        RAISE EXCEPTION 'a reconciliation exception is resolved once and otherwise never changes'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER reconciliation_exceptions_resolved_once
    BEFORE UPDATE OR DELETE ON stockcore.reconciliation_exceptions
    FOR EACH ROW EXECUTE FUNCTION stockcore.keep_exception();

-- A closed day never changes, nor what it counted (live/closing.sql).
CREATE OR REPLACE TRIGGER daily_closes_append_only
    BEFORE UPDATE OR DELETE ON stockcore.daily_closes
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();
CREATE OR REPLACE TRIGGER daily_close_items_append_only
    BEFORE UPDATE OR DELETE ON stockcore.daily_close_items
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();
