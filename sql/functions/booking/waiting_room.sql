-- The waiting room (contract: "On-sale fairness"). Tables in migrations/V0014.
--
-- Nothing admits anyone: a ticket's position is computed when it is read, and its
-- admission window follows from the position, opens_at and the rate. Entering writes one
-- new row per visitor (and reads the queue's settings row), so a hot on-sale's visitors
-- do not queue on a shared row. Visitors who came before opens_at are ranked by
-- sha256(secret seed || ticket id): a fixed random permutation nobody outside can predict.

CREATE OR REPLACE FUNCTION booking.queue_position(p_ticket booking.queue_tickets, p_queue booking.queues, p_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql
STABLE
AS $$
-- The ticket's place in its queue at p_at: NULL before opens_at; the early visitors first,
-- in their random order, then the others in arrival order.
DECLARE
    v_early bigint;
    v_ahead bigint;
BEGIN
    IF p_at < p_queue.opens_at THEN
        RETURN NULL;
    END IF;
    IF p_ticket.entered_at < p_queue.opens_at THEN
        SELECT count(*) INTO v_ahead
        FROM booking.queue_tickets AS t
        WHERE t.inventory_id = p_ticket.inventory_id AND t.pre_rank < p_ticket.pre_rank
          AND t.entered_at < p_queue.opens_at;
        RETURN v_ahead + 1;
    END IF;
    SELECT count(*) INTO v_early
    FROM booking.queue_tickets AS t
    WHERE t.inventory_id = p_ticket.inventory_id AND t.entered_at < p_queue.opens_at;
    SELECT count(*) INTO v_ahead
    FROM booking.queue_tickets AS t
    WHERE t.inventory_id = p_ticket.inventory_id
      AND t.entered_at >= p_queue.opens_at
      AND (t.entered_at, t.arrival_no) < (p_ticket.entered_at, p_ticket.arrival_no);
    RETURN v_early + v_ahead + 1;
END;
$$;

CREATE OR REPLACE FUNCTION booking.admitted_at(p_queue booking.queues, p_position bigint)
RETURNS timestamptz
LANGUAGE sql
IMMUTABLE
AS $$
    -- The contract's formula, as written: no rounding.
    SELECT p_queue.opens_at + (p_position - 1) * interval '1 minute' / p_queue.admit_per_minute;
$$;

CREATE OR REPLACE FUNCTION booking.require_admission(p_inventory_id uuid, p_holder text, p_ticket_id uuid)
RETURNS void
LANGUAGE plpgsql
AS $$
-- RB006 unless p_ticket_id is a ticket of this inventory's queue, of visitor p_holder,
-- admitted now (between its admission time and the end of its admission window).
DECLARE
    v_ticket booking.queue_tickets;
    v_queue booking.queues;
    v_at timestamptz := clock_timestamp();
    v_position bigint;
    v_admitted_at timestamptz;
BEGIN
    IF p_ticket_id IS NULL THEN
        RAISE EXCEPTION 'inventory % sells through its waiting room', p_inventory_id
            USING ERRCODE = 'RB006', HINT = 'api.enter_queue, then api.place_hold_v2 with the admitted ticket.';
    END IF;
    SELECT * INTO v_ticket FROM booking.queue_tickets AS t WHERE t.ticket_id = p_ticket_id;
    SELECT * INTO v_queue FROM booking.queues AS q WHERE q.inventory_id = p_inventory_id;
    IF v_ticket.ticket_id IS NULL OR v_queue.inventory_id IS NULL
       OR v_ticket.inventory_id <> p_inventory_id OR v_ticket.visitor <> p_holder THEN
        RAISE EXCEPTION 'ticket % does not admit % to inventory %', p_ticket_id, p_holder, p_inventory_id
            USING ERRCODE = 'RB006';
    END IF;
    v_position := booking.queue_position(v_ticket, v_queue, v_at);
    v_admitted_at := booking.admitted_at(v_queue, v_position);
    IF v_position IS NULL OR v_at < v_admitted_at OR v_at >= v_admitted_at + v_queue.admission_ttl THEN
        RAISE EXCEPTION 'ticket % is not admitted now', p_ticket_id
            USING ERRCODE = 'RB006',
                  DETAIL = pg_catalog.format('position %s, admitted from %s for %s',
                                             v_position, v_admitted_at, v_queue.admission_ttl);
    END IF;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- api

CREATE OR REPLACE FUNCTION api.open_queue(
    p_inventory_id uuid, p_opens_at timestamptz, p_admit_per_minute int,
    p_admission_ttl interval DEFAULT '10 minutes'
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queue booking.queues;
BEGIN
    PERFORM core.require(p_inventory_id, 'p_inventory_id');
    PERFORM core.require(p_opens_at, 'p_opens_at');
    PERFORM core.require_range(p_admit_per_minute, 'p_admit_per_minute', 1, 1000000);
    PERFORM core.require_interval(p_admission_ttl, 'p_admission_ttl', interval '1 second', interval '1 day');
    -- The inventory row serialises the settings changes of its queue.
    PERFORM FROM booking.inventory AS i WHERE i.inventory_id = p_inventory_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory % not found', p_inventory_id USING ERRCODE = 'RB005';
    END IF;
    SELECT * INTO v_queue FROM booking.queues AS q WHERE q.inventory_id = p_inventory_id;
    IF FOUND AND v_queue.opens_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'the queue of inventory % opened at %', p_inventory_id, v_queue.opens_at
            USING ERRCODE = 'RB002', HINT = 'Settings can change only before opens_at.';
    END IF;
    INSERT INTO booking.queues AS q (inventory_id, opens_at, admit_per_minute, admission_ttl)
    VALUES (p_inventory_id, p_opens_at, p_admit_per_minute, p_admission_ttl)
    ON CONFLICT (inventory_id) DO UPDATE
    SET opens_at = excluded.opens_at, admit_per_minute = excluded.admit_per_minute,
        admission_ttl = excluded.admission_ttl;
    UPDATE booking.inventory SET queued = true WHERE inventory_id = p_inventory_id AND NOT queued;
END;
$$;
COMMENT ON FUNCTION api.open_queue(uuid, timestamptz, int, interval) IS
'Puts a waiting room in front of an inventory: from then on holds need an admitted ticket (api.place_hold_v2). Again before opens_at changes the settings, after it RB002; RB005 unknown inventory; p_admit_per_minute 1..1,000,000.';

CREATE OR REPLACE FUNCTION api.enter_queue(p_inventory_id uuid, p_visitor text)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seed bytea;
    v_ticket_id uuid := gen_random_uuid();
    v_existing uuid;
BEGIN
    PERFORM core.require(p_inventory_id, 'p_inventory_id');
    PERFORM core.require_text(p_visitor, 'p_visitor', 200);
    SELECT q.seed INTO v_seed FROM booking.queues AS q WHERE q.inventory_id = p_inventory_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory % has no queue', p_inventory_id USING ERRCODE = 'RB005';
    END IF;
    INSERT INTO booking.queue_tickets (ticket_id, inventory_id, visitor, pre_rank)
    VALUES (v_ticket_id, p_inventory_id, p_visitor, sha256(v_seed || uuid_send(v_ticket_id)))
    ON CONFLICT (inventory_id, visitor) DO NOTHING;
    IF FOUND THEN
        RETURN v_ticket_id;
    END IF;
    -- Entered before: the same ticket (the unique index waited for a concurrent insert).
    SELECT t.ticket_id INTO v_existing
    FROM booking.queue_tickets AS t
    WHERE t.inventory_id = p_inventory_id AND t.visitor = p_visitor;
    RETURN v_existing;
END;
$$;
COMMENT ON FUNCTION api.enter_queue(uuid, text) IS
'A ticket in the inventory''s waiting room for p_visitor; the same visitor entering again gets the same ticket. RB005 when the inventory has no queue.';

CREATE OR REPLACE FUNCTION api.queue_status(p_ticket_id uuid)
RETURNS TABLE ("position" bigint, admitted boolean, admitted_at timestamptz, admission_expires_at timestamptz)  -- noqa: RF06
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ticket booking.queue_tickets;
    v_queue booking.queues;
    v_at timestamptz := clock_timestamp();
    v_position bigint;
    v_admitted_at timestamptz;
BEGIN
    PERFORM core.require(p_ticket_id, 'p_ticket_id');
    SELECT * INTO v_ticket FROM booking.queue_tickets AS t WHERE t.ticket_id = p_ticket_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ticket % not found', p_ticket_id USING ERRCODE = 'RB005';
    END IF;
    SELECT * INTO v_queue FROM booking.queues AS q WHERE q.inventory_id = v_ticket.inventory_id;
    v_position := booking.queue_position(v_ticket, v_queue, v_at);
    v_admitted_at := booking.admitted_at(v_queue, v_position);
    RETURN QUERY SELECT
        v_position,
        coalesce(v_at >= v_admitted_at AND v_at < v_admitted_at + v_queue.admission_ttl, false),
        v_admitted_at,
        v_admitted_at + v_queue.admission_ttl;
END;
$$;
COMMENT ON FUNCTION api.queue_status(uuid) IS
'position (NULL before opens_at), admitted (now between admitted_at and admission_expires_at), admitted_at = opens_at + (position - 1) minutes / admit_per_minute, admission_expires_at; RB005 unknown ticket.';

CREATE OR REPLACE FUNCTION api.place_hold_v2(
    p_inventory_id uuid, p_quantity int, p_holder text, p_hold_key text DEFAULT NULL,
    p_queue_ticket uuid DEFAULT NULL
)
RETURNS TABLE (hold_id uuid, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- api.place_hold with a ticket: place_hold checks the ticket itself (one check, in one
-- place) when the inventory is queued; the ticket reaches it as a transaction setting.
BEGIN
    PERFORM set_config('booking.queue_ticket', coalesce(p_queue_ticket::text, ''), true);
    RETURN QUERY SELECT h.hold_id, h.expires_at FROM api.place_hold(p_inventory_id, p_quantity, p_holder, p_hold_key) AS h;
    PERFORM set_config('booking.queue_ticket', '', true);
END;
$$;
COMMENT ON FUNCTION api.place_hold_v2(uuid, int, text, text, uuid) IS
'As api.place_hold; on an inventory with a queue, RB006 unless p_queue_ticket is an admitted, unexpired ticket whose visitor is p_holder.';
