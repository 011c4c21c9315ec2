-- Bookings and their state machine (contract: "Bookings"). Transitions are rows of
-- booking.booking_transitions; the guard trigger refuses any other change of status,
-- whoever makes it, and the history trigger records every change.

CREATE OR REPLACE FUNCTION booking.guard_booking_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
-- BEFORE INSERT OR UPDATE on booking.bookings: RB004 unless the change is a transition
-- listed in booking.booking_transitions, made with version + 1 and its event.
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending_payment' OR NEW.version <> 1 OR NEW.last_event <> 'created' THEN
            RAISE EXCEPTION 'a booking starts as pending_payment' USING ERRCODE = 'RB004';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.booking_id, NEW.holder, NEW.idempotency_key, NEW.request_fingerprint, NEW.amount, NEW.currency,
        NEW.response, NEW.created_at)
        IS DISTINCT FROM (OLD.booking_id, OLD.holder, OLD.idempotency_key, OLD.request_fingerprint, OLD.amount,
                          OLD.currency, OLD.response, OLD.created_at) THEN
        RAISE EXCEPTION 'booking %: who, what and how much never change', OLD.booking_id USING ERRCODE = 'RB004';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status OR NEW.version IS DISTINCT FROM OLD.version
        OR NEW.last_event IS DISTINCT FROM OLD.last_event THEN
        IF NEW.version IS DISTINCT FROM OLD.version + 1 OR NOT EXISTS (
            SELECT FROM booking.booking_transitions AS t
            WHERE t.from_status = OLD.status AND t.event = NEW.last_event AND t.to_status = NEW.status
        ) THEN
            RAISE EXCEPTION 'booking % cannot go from % to % on %', OLD.booking_id, OLD.status, NEW.status,
                coalesce(NEW.last_event, 'no event')
                USING ERRCODE = 'RB004',
                      HINT = 'Allowed transitions: SELECT * FROM ops.booking_transitions.';
        END IF;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION booking.after_booking_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
-- AFTER INSERT OR UPDATE on booking.bookings: the history row, and what entering a state
-- implies, in the same transaction (so no path can skip it).
DECLARE
    v_correlation_id text := left(current_setting('app.correlation_id', true), 200);
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO booking.booking_history (booking_id, event, from_status, to_status, correlation_id)
        VALUES (NEW.booking_id, 'created', NULL, NEW.status, v_correlation_id);
        RETURN NULL;
    END IF;
    IF NEW.version = OLD.version THEN
        RETURN NULL;
    END IF;
    INSERT INTO booking.booking_history (
        booking_id, event, from_status, to_status, stripe_event_id, correlation_id, detail
    )
    VALUES (
        NEW.booking_id, NEW.last_event, OLD.status, NEW.status, NEW.last_stripe_event_id, v_correlation_id,
        nullif(current_setting('booking.transition_detail', true), '')
    );
    IF NEW.status = 'confirmed' AND OLD.status <> 'disputed' THEN
        PERFORM booking.convert_booked_holds(NEW.booking_id);
        -- The job carries the message as of the confirmation: the worker's role may
        -- not read bookings (CONTRACT.md, Roles), and the mail says what was confirmed.
        PERFORM jobs.enqueue(
            'email.booking_confirmed', booking.confirmation_message(NEW.booking_id, NEW.holder, NEW.amount, NEW.currency),
            'email.booking_confirmed:' || NEW.booking_id
        );
    ELSIF NEW.status IN ('cancelled', 'refunded') THEN
        -- Not paid, or all the money went back: the units are for sale again.
        PERFORM booking.give_back_units(NEW.booking_id);
    ELSIF NEW.status = 'refund_pending' AND OLD.status <> 'refund_pending' THEN
        PERFORM booking.give_back_units(NEW.booking_id);
        -- A refund job for every payment the booking received.
        PERFORM booking.enqueue_refund(NEW.booking_id, t.payment_intent_id, NEW.last_event)
        FROM ledger.transactions AS t
        WHERE t.booking_id = NEW.booking_id AND t.kind = 'charge';
    END IF;
    -- 'expired': its holds share its deadline, so they are already dead and not counted;
    -- the hold sweeper (or a buyer short of units) gives their units back.
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION booking.enqueue_refund(p_booking_id uuid, p_payment_intent_id text, p_reason text)
RETURNS uuid
LANGUAGE sql
AS $$
    -- The one place a stripe.refund job is made. Money goes back when the booking enters
    -- refund_pending (every payment it received: booking.after_booking_change) and when a
    -- payment is one no booking keeps (paid twice, or no units for it while the booking
    -- does not enter refund_pending: stripe.on_payment_succeeded). How much the job sends is
    -- read from the ledger when it runs (api.refunds_due). One job per PaymentIntent, ever:
    -- two jobs refunding the same payment at once could both see it unrefunded and refund
    -- it twice.
    SELECT jobs.enqueue('stripe.refund',
        jsonb_build_object('booking_id', p_booking_id, 'payment_intent_id', p_payment_intent_id, 'reason', p_reason),
        'stripe.refund:' || p_payment_intent_id);
$$;

CREATE OR REPLACE FUNCTION booking.confirmation_message(
    p_booking_id uuid, p_holder text, p_amount bigint, p_currency text
)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
AS $$
-- What the confirmation e-mail says: who, how much, and the converted holds' items.
-- PL/pgSQL, not SQL: a SQL function called from PL/pgSQL is parsed and planned again at every
-- call (its plan lives for the calling statement only), which was a fifth of a payment
-- event's time in the database (docs/PROFILING.md); PL/pgSQL keeps the plan for the session.
BEGIN
    RETURN jsonb_build_object(
        'booking_id', p_booking_id, 'holder', p_holder, 'amount', p_amount, 'currency', p_currency,
        'items', coalesce((
            SELECT jsonb_agg(jsonb_build_object('sku', i.sku, 'quantity', h.quantity) ORDER BY h.created_at, h.hold_id)
            FROM booking.holds AS h
            INNER JOIN booking.inventory AS i ON i.inventory_id = h.inventory_id
            WHERE h.booking_id = p_booking_id AND h.status = 'converted'
        ), '[]'::jsonb)
    );
END;
$$;

DROP TRIGGER IF EXISTS bookings_guard ON booking.bookings;
CREATE TRIGGER bookings_guard BEFORE INSERT OR UPDATE ON booking.bookings
FOR EACH ROW EXECUTE FUNCTION booking.guard_booking_change();
DROP TRIGGER IF EXISTS bookings_after_change ON booking.bookings;
CREATE TRIGGER bookings_after_change AFTER INSERT OR UPDATE ON booking.bookings
FOR EACH ROW EXECUTE FUNCTION booking.after_booking_change();

CREATE OR REPLACE FUNCTION booking.convert_booked_holds(p_booking_id uuid)
RETURNS int
LANGUAGE plpgsql
AS $$
-- The booking is paid: its booked holds become converted and their units sold (the units
-- left 'free' when the hold was placed; now they move from the hold to 'sold'). 'sold'
-- is a counter spread over the buckets, so the units go to any bucket of the inventory
-- that no other transaction has locked (SKIP LOCKED: payments for one hot inventory do
-- not queue on each other's buckets); only when all are busy does it wait, for the
-- hold's own bucket, as a sale did before.
DECLARE
    v_row record;
    v_units int := 0;
    v_bucket smallint;
BEGIN
    FOR v_row IN
        WITH converted AS (
            UPDATE booking.holds AS h
            SET status = 'converted', ended_at = clock_timestamp()
            WHERE h.booking_id = p_booking_id AND h.status = 'booked'
            RETURNING h.inventory_id, h.bucket_no, h.quantity, h.expires_at
        )
        SELECT c.inventory_id, min(c.bucket_no) AS bucket_no, sum(c.quantity)::int AS units,
               bool_or(c.expires_at <= clock_timestamp()) AS was_dead
        FROM converted AS c
        GROUP BY c.inventory_id
        ORDER BY c.inventory_id
    LOOP
        IF v_row.was_dead THEN
            -- A late payment: units counted as available (the hold was past its deadline)
            -- are sold with no bucket crossing 0; the sold-out state may change.
            PERFORM booking.note_cache_change(v_row.inventory_id, p_force => true);
        END IF;
        v_bucket := booking.idle_bucket(v_row.inventory_id);
        UPDATE booking.inventory_buckets
        SET sold = sold + v_row.units
        WHERE inventory_id = v_row.inventory_id AND bucket_no = coalesce(v_bucket, v_row.bucket_no);
        v_units := v_units + v_row.units;
    END LOOP;
    RETURN v_units;
END;
$$;

CREATE OR REPLACE FUNCTION booking.give_back_units(p_booking_id uuid)
RETURNS int
LANGUAGE plpgsql
AS $$
-- The booking's booked and converted holds are released and their units go back to
-- 'free' (converted ones leave 'sold'), one bucket at a time in bucket order.
DECLARE
    v_row record;
    v_total int := 0;
    v_returns booking.bucket_return[] := ARRAY[]::booking.bucket_return[];
BEGIN
    FOR v_row IN
        WITH gone AS (
            UPDATE booking.holds AS h
            SET status = 'released', ended_at = clock_timestamp()
            FROM (
                SELECT x.hold_id, x.status AS old_status
                FROM booking.holds AS x
                WHERE x.booking_id = p_booking_id AND x.status IN ('booked', 'converted')
                ORDER BY x.hold_id
                FOR UPDATE
            ) AS o
            WHERE h.hold_id = o.hold_id
            RETURNING h.inventory_id, h.bucket_no, h.quantity, o.old_status
        )
        SELECT
            g.inventory_id, g.bucket_no, sum(g.quantity)::int AS units,
            coalesce(sum(g.quantity) FILTER (WHERE g.old_status = 'converted'), 0)::int AS unsold
        FROM gone AS g
        GROUP BY g.inventory_id, g.bucket_no
        ORDER BY g.inventory_id, g.bucket_no
    LOOP
        UPDATE booking.inventory_buckets
        SET free = free + v_row.units, sold = sold - v_row.unsold
        WHERE inventory_id = v_row.inventory_id AND bucket_no = v_row.bucket_no;
        v_total := v_total + v_row.units;
        v_returns := v_returns || ROW(v_row.inventory_id, v_row.bucket_no, v_row.units)::booking.bucket_return;
    END LOOP;
    -- Units returned to these inventories: serve their waitlists first (waitlist.sql).
    PERFORM booking.units_returned(v_returns);
    RETURN v_total;
END;
$$;

-- Signatures replaced by a later version of this file (CREATE OR REPLACE would add an overload).
DROP FUNCTION IF EXISTS booking.try_event(uuid, text, text);
DROP FUNCTION IF EXISTS booking.apply_event(uuid, text, text, text);

CREATE OR REPLACE FUNCTION booking.apply_event(
    p_booking_id uuid, p_event text, p_stripe_event_id text DEFAULT NULL, p_detail text DEFAULT NULL,
    p_if_allowed boolean DEFAULT FALSE
)
RETURNS text
LANGUAGE plpgsql
AS $$
-- Moves a booking along the transition for p_event from its current status and returns
-- the new status; RB005 unknown booking. No such transition: RB004, or, with
-- p_if_allowed, nothing changes and the current status is returned (a Stripe event that
-- arrives after a later one moved the booking on). The row lock makes two concurrent
-- events on one booking take turns: the second sees the first's result.
DECLARE
    v_status text;
    v_to text;
    v_locked boolean := false;
BEGIN
    IF p_detail IS NOT NULL THEN
        PERFORM set_config('booking.transition_detail', left(p_detail, 1000), true);
    END IF;
    -- One statement in the usual case. If another transaction moved the booking on
    -- meanwhile, the recheck after its commit compares the new status with the transition
    -- row read before, finds no match and changes nothing: then lock the row and try once
    -- more, now against its settled status.
    LOOP
        UPDATE booking.bookings AS b
        SET status = t.to_status, version = b.version + 1, last_event = p_event,
            last_stripe_event_id = p_stripe_event_id
        FROM booking.booking_transitions AS t
        WHERE b.booking_id = p_booking_id AND t.from_status = b.status AND t.event = p_event
        RETURNING b.status::text INTO v_to;
        EXIT WHEN FOUND OR v_locked;
        SELECT b.status::text INTO v_status FROM booking.bookings AS b WHERE b.booking_id = p_booking_id FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'booking % not found', p_booking_id USING ERRCODE = 'RB005';
        END IF;
        v_locked := true;
    END LOOP;
    IF p_detail IS NOT NULL THEN
        PERFORM set_config('booking.transition_detail', '', true);
    END IF;
    IF v_to IS NULL THEN
        IF p_if_allowed THEN
            RETURN v_status;
        END IF;
        RAISE EXCEPTION 'booking % is %: % is not allowed', p_booking_id, v_status, p_event
            USING ERRCODE = 'RB004', HINT = 'Allowed transitions: SELECT * FROM ops.booking_transitions.';
    END IF;
    RETURN v_to;
END;
$$;

CREATE OR REPLACE FUNCTION booking.expire_due_bookings(p_limit int)
RETURNS int
LANGUAGE plpgsql
AS $$
-- Bookings still awaiting payment past their deadline become expired (a later payment can
-- still confirm them if the units are there).
DECLARE
    v_id uuid;
    v_count int := 0;
BEGIN
    FOR v_id IN
        SELECT b.booking_id
        FROM booking.bookings AS b
        WHERE b.status IN ('pending_payment', 'payment_failed')
          AND b.expires_at <= (SELECT clock_timestamp())
        ORDER BY b.expires_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM booking.apply_event(v_id, 'expire');
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;

-- A payment that came late (stripe.on_payment_succeeded asks before it confirms).

CREATE OR REPLACE FUNCTION booking.retake_expired_holds(p_booking_id uuid)
RETURNS boolean
LANGUAGE plpgsql
AS $$
-- For each of the booking's holds that was swept or reclaimed, the same quantity is taken
-- again if it is available (the caller has locked the hold rows). True when all could be
-- taken; false, and nothing taken, otherwise (the block is a subtransaction).
DECLARE
    v_hold record;
    v_bucket smallint;
BEGIN
    FOR v_hold IN
        SELECT h.hold_id, h.inventory_id, h.quantity, h.holder
        FROM booking.holds AS h
        WHERE h.booking_id = p_booking_id AND h.status = 'expired'
        ORDER BY h.hold_id
    LOOP
        v_bucket := booking.take_units(
            v_hold.inventory_id, v_hold.quantity,
            (SELECT i.bucket_count FROM booking.inventory AS i WHERE i.inventory_id = v_hold.inventory_id));
        INSERT INTO booking.holds (inventory_id, bucket_no, quantity, holder, status, expires_at, booking_id)
        VALUES (v_hold.inventory_id, v_bucket, v_hold.quantity, v_hold.holder, 'booked', clock_timestamp(),
                p_booking_id);
    END LOOP;
    RETURN true;
EXCEPTION WHEN SQLSTATE 'RB001' THEN
    RETURN false;
END;
$$;

CREATE OR REPLACE FUNCTION booking.reserve_for_late_payment(p_booking_id uuid)
RETURNS boolean
LANGUAGE plpgsql
AS $$
-- A payment arrived for a booking whose deadline may have passed. Holds still 'booked'
-- keep their units (nobody reclaimed them: their rows are locked here); the units of the
-- expired ones are taken again if they are there. True when the booking holds all its
-- units now; false (and nothing taken) otherwise. The usual case, a payment in time,
-- locks the rows and opens no subtransaction.
DECLARE
    v_expired boolean;
BEGIN
    -- All the hold rows first, in one statement: taking units takes bucket locks, and
    -- whoever holds bucket locks must not then wait for a hold row (holds.sql, lock order).
    SELECT coalesce(bool_or(l.status = 'expired'), false) INTO v_expired
    FROM (
        SELECT h.status
        FROM booking.holds AS h
        WHERE h.booking_id = p_booking_id AND h.status IN ('booked', 'expired')
        ORDER BY h.hold_id
        FOR UPDATE
    ) AS l;
    IF NOT v_expired THEN
        RETURN true;
    END IF;
    RETURN booking.retake_expired_holds(p_booking_id);
END;
$$;

-- ---------------------------------------------------------------------------------------
-- api

CREATE OR REPLACE FUNCTION api.create_booking(
    p_idempotency_key text, p_holder text, p_hold_ids uuid[], p_metadata jsonb DEFAULT '{}'
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_hold_ids uuid[];
    v_fingerprint text;
    v_existing booking.bookings;
    v_holds record;
    v_booking_id uuid := gen_random_uuid();
    v_response jsonb;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        PERFORM core.require_text(p_idempotency_key, 'p_idempotency_key', 255);
    END IF;
    PERFORM core.require_text(p_holder, 'p_holder', 200);
    PERFORM core.require(p_hold_ids, 'p_hold_ids');
    IF cardinality(p_hold_ids) NOT BETWEEN 1 AND 50 THEN
        RAISE EXCEPTION 'p_hold_ids must name 1 to 50 holds, got %', cardinality(p_hold_ids) USING ERRCODE = '22023';
    END IF;
    IF array_position(p_hold_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'p_hold_ids must not contain NULL' USING ERRCODE = '22004';
    END IF;
    SELECT array_agg(DISTINCT x ORDER BY x) INTO v_hold_ids FROM unnest(p_hold_ids) AS x;
    IF cardinality(v_hold_ids) <> cardinality(p_hold_ids) THEN
        RAISE EXCEPTION 'p_hold_ids names a hold twice' USING ERRCODE = '22023';
    END IF;
    PERFORM core.require(p_metadata, 'p_metadata');
    IF jsonb_typeof(p_metadata) <> 'object' THEN
        RAISE EXCEPTION 'p_metadata must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF octet_length(p_metadata::text) > 8192 THEN
        RAISE EXCEPTION 'p_metadata is % bytes, at most 8192 are allowed', octet_length(p_metadata::text)
            USING ERRCODE = '22001';
    END IF;

    -- The request, canonical (jsonb orders keys; the holds as a sorted set).
    v_fingerprint := encode(sha256(convert_to(
        jsonb_build_object('holder', p_holder, 'hold_ids', to_jsonb(v_hold_ids), 'metadata', p_metadata)::text,
        'UTF8'
    )), 'hex');
    IF p_idempotency_key IS NOT NULL THEN
        -- One request per (holder, key) at a time; the second waits, then replays.
        PERFORM pg_advisory_xact_lock(hashtextextended('booking' || E'\n' || p_holder || E'\n' || p_idempotency_key, 7262));
        SELECT * INTO v_existing FROM booking.bookings AS b
        WHERE b.holder = p_holder AND b.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_existing.request_fingerprint <> v_fingerprint THEN
                RAISE EXCEPTION 'idempotency key % was used for another request', p_idempotency_key
                    USING ERRCODE = 'RI001', DETAIL = pg_catalog.format('booking %s', v_existing.booking_id);
            END IF;
            RETURN v_existing.response;
        END IF;
    END IF;

    -- The holds, locked in id order; each must be live, unexpired and the holder's.
    SELECT
        count(*) AS n,
        count(*) FILTER (WHERE h.holder <> p_holder) AS not_theirs,
        count(*) FILTER (WHERE h.status <> 'live' OR h.expires_at <= clock_timestamp()) AS not_live,
        count(DISTINCT i.currency) AS currencies,
        min(i.currency) AS currency,
        -- Each hold at the price it was placed at (NULL: placed before prices could change).
        sum(h.quantity::bigint * coalesce(h.unit_amount, i.unit_amount)) AS amount,
        min(h.expires_at) AS expires_at
    INTO v_holds
    FROM (
        SELECT x.* FROM booking.holds AS x WHERE x.hold_id = ANY(v_hold_ids) ORDER BY x.hold_id FOR UPDATE
    ) AS h
    JOIN booking.inventory AS i ON i.inventory_id = h.inventory_id;
    IF v_holds.n <> cardinality(v_hold_ids) THEN
        RAISE EXCEPTION '% of the % holds do not exist', cardinality(v_hold_ids) - v_holds.n, cardinality(v_hold_ids)
            USING ERRCODE = 'RB005';
    END IF;
    IF v_holds.not_theirs > 0 THEN
        RAISE EXCEPTION '% hold(s) are not %''s', v_holds.not_theirs, p_holder USING ERRCODE = 'RB002';
    END IF;
    IF v_holds.not_live > 0 THEN
        RAISE EXCEPTION '% hold(s) are not live', v_holds.not_live
            USING ERRCODE = 'RB002', HINT = 'Released, expired or already booked holds cannot be booked.';
    END IF;
    IF v_holds.currencies > 1 THEN
        RAISE EXCEPTION 'the holds are priced in % currencies; a booking has one' , v_holds.currencies
            USING ERRCODE = '22023';
    END IF;

    v_response := jsonb_build_object(
        'booking_id', v_booking_id,
        'status', 'pending_payment',
        'amount', v_holds.amount,
        'currency', v_holds.currency,
        'expires_at', v_holds.expires_at
    );
    INSERT INTO booking.bookings (
        booking_id, holder, idempotency_key, request_fingerprint, status, amount, currency, metadata,
        expires_at, response
    )
    VALUES (
        v_booking_id, p_holder, p_idempotency_key, v_fingerprint, 'pending_payment', v_holds.amount,
        v_holds.currency, p_metadata, v_holds.expires_at, v_response
    );
    -- The holds now live and die with the booking: one deadline for all of them.
    UPDATE booking.holds
    SET status = 'booked', booking_id = v_booking_id, expires_at = v_holds.expires_at
    WHERE hold_id = ANY(v_hold_ids);
    RETURN v_response;
END;
$$;
COMMENT ON FUNCTION api.create_booking(text, text, uuid[], jsonb) IS
'Turns the holder''s live holds into a booking awaiting payment: {"booking_id", "status": "pending_payment", "amount", "currency", "expires_at"}. Idempotent on (holder, key): the same request returns the same jsonb; RI001 same key with another request; RB002 a hold not live or not the holder''s; RB005 unknown hold. A NULL key asks for no replay protection.';

CREATE OR REPLACE FUNCTION api.cancel_booking(p_booking_id uuid, p_reason text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require(p_booking_id, 'p_booking_id');
    PERFORM core.require_text(p_reason, 'p_reason', 500);
    RETURN booking.apply_event(p_booking_id, 'cancel', p_detail => p_reason);
END;
$$;
COMMENT ON FUNCTION api.cancel_booking(uuid, text) IS
'Cancels a booking and returns its new status: cancelled before payment (units released), refund_pending after payment (a stripe.refund job is enqueued). RB004 when its status does not allow it, RB005 unknown booking.';

CREATE OR REPLACE FUNCTION api.get_booking(p_booking_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    PERFORM core.require(p_booking_id, 'p_booking_id');
    SELECT jsonb_build_object(
        'booking_id', b.booking_id,
        'status', b.status,
        'amount', b.amount,
        'currency', b.currency,
        'holder', b.holder,
        'metadata', b.metadata,
        'expires_at', b.expires_at,
        'payment_intent_id', b.payment_intent_id,
        'amount_paid', coalesce(l.paid, 0),
        'amount_refunded', coalesce(l.refunded, 0),
        'holds', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                'hold_id', h.hold_id, 'inventory_id', h.inventory_id, 'sku', i.sku,
                'quantity', h.quantity, 'status', h.status
            ) ORDER BY h.created_at, h.hold_id)
            FROM booking.holds AS h
            JOIN booking.inventory AS i ON i.inventory_id = h.inventory_id
            WHERE h.booking_id = b.booking_id
        ), '[]'::jsonb),
        'history', (
            SELECT jsonb_agg(jsonb_build_object(
                'event', x.event, 'from_status', x.from_status, 'to_status', x.to_status, 'at', x.at,
                'stripe_event_id', x.stripe_event_id, 'correlation_id', x.correlation_id
            ) ORDER BY x.history_id)
            FROM booking.booking_history AS x
            WHERE x.booking_id = b.booking_id
        )
    )
    INTO v_result
    FROM booking.bookings AS b
    LEFT JOIN LATERAL (
        SELECT sum(p.paid) AS paid, sum(p.refunded) AS refunded
        FROM ledger.payment_totals AS p
        WHERE p.booking_id = b.booking_id
    ) AS l ON true
    WHERE b.booking_id = p_booking_id;
    IF v_result IS NULL THEN
        RAISE EXCEPTION 'booking % not found', p_booking_id USING ERRCODE = 'RB005';
    END IF;
    RETURN v_result;
END;
$$;
COMMENT ON FUNCTION api.get_booking(uuid) IS
'The booking as JSON: booking_id, status, amount, currency, holder, metadata, holds, payment_intent_id, amount_paid and amount_refunded (from the ledger), expires_at, and history (oldest first: event, from_status, to_status, at, stripe_event_id, correlation_id). RB005 unknown booking.';
