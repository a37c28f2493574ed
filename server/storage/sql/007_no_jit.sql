-- No JIT compilation inside the batch functions. 004 turned seq scans off in them (their
-- plans must look rows up by key), which prices any scan left, even of a one-row table,
-- at 10^10, far above jit_above_cost: PostgreSQL then compiled such a statement on every
-- call (relay_step's one-row UPDATE took 60-100 ms, 78 ms of it in LLVM). Statements that
-- touch a batch's worth of rows never gain from JIT; the server's sessions turn it off
-- too (server/storage/postgres.py), and these settings keep it off for any other caller.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'stockcore.hold_stock(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[])',
        'stockcore.finish_holds(text[], smallint, text[])',
        'stockcore.create_orders(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[], bigint[], text[], text[], bigint[], bytea[], text[])',
        'stockcore.pay_orders(text[], text[], bigint[], text[], text[], text[], text[], text)',
        'stockcore.cancel_orders(text[], text[], text[], text[], text)',
        'stockcore.advance_orders(smallint, text[], text[], text[], text[], timestamptz[], text[], text[], text[])',
        'stockcore.expire_due(int, text, text)',
        'stockcore.relay_step(int, bigint)',
        'stockcore.record_published(bigint)',
        'stockcore.outbox_backlog()',
        'stockcore.adjust(text, bytea, smallint, text, bigint, bigint, text, text)',
        'stockcore.stock_levels(smallint[], text[])'
    ]::regprocedure[] LOOP
        EXECUTE format('ALTER FUNCTION %s SET jit = off', f);
    END LOOP;
END $$;
