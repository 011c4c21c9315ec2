-- Stripe events: stored once by id and applied in the same transaction.

-- Names an earlier version of this file used: stripe.outcome_of is stripe.apply_payload, and
-- stripe.apply_event (a stored event, not booking.apply_event's transition) is
-- stripe.reapply_stored_event.
DROP FUNCTION IF EXISTS stripe.outcome_of(jsonb);
DROP FUNCTION IF EXISTS stripe.apply_event(text);

CREATE OR REPLACE FUNCTION stripe.check_event(p_event jsonb)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
-- RW001 unless p_event has the shape of a Stripe event (contract: "Stripe").
BEGIN
    IF p_event IS NULL THEN
        RAISE EXCEPTION 'the event is NULL' USING ERRCODE = 'RW001';
    END IF;
    IF jsonb_typeof(p_event) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a Stripe event is a JSON object, got %', coalesce(jsonb_typeof(p_event), 'nothing')
            USING ERRCODE = 'RW001';
    END IF;
    IF jsonb_typeof(p_event -> 'id') IS DISTINCT FROM 'string'
        OR length(p_event ->> 'id') NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'a Stripe event needs a string "id" of 1 to 255 characters' USING ERRCODE = 'RW001';
    END IF;
    IF p_event -> 'object' IS DISTINCT FROM '"event"'::jsonb THEN
        RAISE EXCEPTION 'a Stripe event has "object": "event"' USING ERRCODE = 'RW001';
    END IF;
    IF jsonb_typeof(p_event -> 'type') IS DISTINCT FROM 'string'
        OR length(p_event ->> 'type') NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'a Stripe event needs a string "type" of 1 to 255 characters' USING ERRCODE = 'RW001';
    END IF;
    IF jsonb_typeof(p_event #> '{data,object}') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a Stripe event needs an object "data.object"' USING ERRCODE = 'RW001';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION stripe.livemode(p_event jsonb)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
AS $$
    -- The event's livemode flag, NULL when absent or not a boolean.
    SELECT CASE WHEN jsonb_typeof(p_event -> 'livemode') = 'boolean' THEN (p_event -> 'livemode')::boolean END;
$$;

CREATE OR REPLACE FUNCTION stripe.retry_delay(p_attempts int)
RETURNS interval
LANGUAGE sql
IMMUTABLE
AS $$
    -- Capped exponential backoff: 1, 2, 4 ... minutes, at most 6 hours.
    SELECT least(interval '1 minute' * power(2, least(greatest(p_attempts, 1) - 1, 20)), interval '6 hours');
$$;

CREATE OR REPLACE FUNCTION stripe.attempts_max()
RETURNS int
LANGUAGE sql
IMMUTABLE
AS $$
    -- About three days of retries with stripe.retry_delay, like Stripe's own schedule.
    SELECT 20;
$$;

CREATE OR REPLACE FUNCTION stripe.after_attempt(p_outcome text, p_attempts int)
RETURNS TABLE (status text, processed_at timestamptz, next_attempt_at timestamptz, last_error text)
LANGUAGE sql
AS $$
    -- The one rule for an event's row after its p_attempts-th attempt came out as p_outcome
    -- (processed, ignored, deferred or failed): a deferred or failed event is retried with
    -- capped exponential backoff (stripe.retry_delay), dead after stripe.attempts_max()
    -- attempts. last_error is the deferral's reason; a failure brings its own error.
    SELECT
        CASE WHEN p_outcome IN ('deferred', 'failed') AND p_attempts >= stripe.attempts_max() THEN 'dead'
             ELSE p_outcome END,
        CASE WHEN p_outcome IN ('processed', 'ignored') THEN clock_timestamp() END,
        CASE WHEN p_outcome IN ('deferred', 'failed') AND p_attempts < stripe.attempts_max()
             THEN now() + stripe.retry_delay(p_attempts) END,
        CASE WHEN p_outcome = 'deferred' THEN 'waiting for the payment it depends on' END;
$$;

CREATE OR REPLACE FUNCTION stripe.apply_payload(p_event jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
-- Applies an event (stored or about to be): processed, ignored (not applicable, or another
-- mode or account than stripe.config), or deferred (it depends on something not booked yet).
DECLARE
    v_config stripe.config;
BEGIN
    SELECT * INTO v_config FROM stripe.config;
    IF stripe.livemode(p_event) IS DISTINCT FROM v_config.livemode
        OR (v_config.account_id IS NOT NULL AND p_event ->> 'account' IS NOT NULL
            AND p_event ->> 'account' <> v_config.account_id) THEN
        RETURN 'ignored';
    END IF;
    RETURN stripe.dispatch(p_event ->> 'id', p_event ->> 'type', p_event #> '{data,object}');
END;
$$;

CREATE OR REPLACE FUNCTION stripe.reapply_stored_event(p_event_id text)
RETURNS text
LANGUAGE plpgsql
AS $$
-- Applies one stored, row-locked event again and records the outcome on its row; a
-- deferred one is retried with backoff, dead after stripe.attempts_max() attempts.
DECLARE
    v_outcome text;
BEGIN
    v_outcome := stripe.apply_payload((SELECT e.payload FROM stripe.events AS e WHERE e.event_id = p_event_id));
    UPDATE stripe.events AS e
    SET (status, processed_at, next_attempt_at, last_error) = (
            SELECT a.status, a.processed_at, a.next_attempt_at, a.last_error
            FROM stripe.after_attempt(v_outcome, e.attempts + 1) AS a
        ),
        attempts = e.attempts + 1,
        last_sqlstate = NULL
    WHERE e.event_id = p_event_id;
    RETURN v_outcome;
END;
$$;

CREATE OR REPLACE FUNCTION stripe.retry_due_events(p_batch_size int DEFAULT 200)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- The cron job: re-applies failed and deferred events whose retry is due, oldest first,
-- each in a subtransaction so that one failure is recorded and does not stop the rest.
DECLARE
    v_id text;
    v_outcome text;
    v_sqlstate text;
    v_message text;
    v_counts jsonb := '{}'::jsonb;
BEGIN
    FOR v_id IN
        SELECT e.event_id::text FROM stripe.events AS e
        WHERE e.status IN ('deferred', 'failed') AND e.next_attempt_at <= (SELECT now())
        ORDER BY e.next_attempt_at
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            v_outcome := stripe.reapply_stored_event(v_id);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
            -- The same record of a failed attempt as the shim makes after a failed delivery.
            PERFORM stripe.record_failure(
                (SELECT e.payload FROM stripe.events AS e WHERE e.event_id = v_id), v_sqlstate, v_message);
            v_outcome := 'failed';
        END;
        v_counts := v_counts || jsonb_build_object(v_outcome, coalesce((v_counts ->> v_outcome)::int, 0) + 1);
    END LOOP;
    RETURN v_counts;
END;
$$;

CREATE OR REPLACE FUNCTION ops.replay_stripe_event(p_event_id text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require_text(p_event_id, 'p_event_id', 255);
    PERFORM 1 FROM stripe.events AS e WHERE e.event_id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no stored Stripe event %', p_event_id USING ERRCODE = 'RB005';
    END IF;
    RETURN stripe.reapply_stored_event(p_event_id);
END;
$$;
COMMENT ON FUNCTION ops.replay_stripe_event(text) IS
'Re-applies a stored Stripe event now (dead, failed, deferred or any other) and returns the outcome; safe to repeat: the ledger takes each Stripe object once.';

CREATE OR REPLACE FUNCTION stripe.ingest(p_event jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
-- Stores a Stripe event once by id and applies it, in the caller's transaction.
DECLARE
    v_event_id text := p_event ->> 'id';
    v_status text;
    v_outcome text;
BEGIN
    PERFORM stripe.check_event(p_event);
    -- Deliveries of one event id take turns; a later one finds the row the first wrote.
    PERFORM pg_advisory_xact_lock(hashtextextended(v_event_id, 7263));
    SELECT e.status::text INTO v_status FROM stripe.events AS e WHERE e.event_id = v_event_id FOR UPDATE;
    IF FOUND THEN
        -- A redelivery of an event that failed or waits is a retry: apply it now.
        IF v_status IN ('failed', 'deferred', 'dead') THEN
            RETURN stripe.reapply_stored_event(v_event_id);
        END IF;
        RETURN 'duplicate';
    END IF;
    -- New: apply first, then store it once with its outcome (one write of the row).
    v_outcome := stripe.apply_payload(p_event);
    INSERT INTO stripe.events (
        event_id, type, livemode, payload, status, attempts, processed_at, next_attempt_at, last_error,
        correlation_id
    )
    SELECT v_event_id, p_event ->> 'type', stripe.livemode(p_event), p_event, a.status, 1,
           a.processed_at, a.next_attempt_at, a.last_error, left(current_setting('app.correlation_id', true), 200)
    FROM stripe.after_attempt(v_outcome, 1) AS a;
    RETURN v_outcome;
END;
$$;

CREATE OR REPLACE FUNCTION stripe.lock_order_key(p_event jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$
    -- What an event locks first: its payment (the PaymentIntent, else the booking named in
    -- its metadata), else only itself. A batch applies its events in this order, so two
    -- batches with events of the same payments lock them in the same order.
    SELECT coalesce(
        CASE WHEN p_event #>> '{data,object,object}' = 'payment_intent' THEN p_event #>> '{data,object,id}' END,
        p_event #>> '{data,object,payment_intent}',
        p_event #>> '{data,object,metadata,booking_id}',
        ''
    );
$$;

CREATE OR REPLACE FUNCTION api.ingest_stripe_event(p_event jsonb)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Generic plans for every statement below it: custom plans were re-planned at each call.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN stripe.ingest(p_event);
END;
$$;
COMMENT ON FUNCTION api.ingest_stripe_event(jsonb) IS
'Stores a verified Stripe event once by id and applies it in the same transaction. Returns processed, duplicate, ignored or deferred; RW001 if the payload is not a Stripe event.';

CREATE OR REPLACE FUNCTION api.ingest_stripe_events(p_events jsonb, p_correlation_ids text[] DEFAULT NULL)
RETURNS text[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- Group commit: several verified events (a JSON array) stored and applied in one
-- transaction, each as api.ingest_stripe_event would alone, with its own correlation id.
-- Any error rolls all of them back (the caller then sends them one at a time, so each
-- answers for itself).
DECLARE
    v_events jsonb[];
    v_outcomes text[];
    v_i int;
    v_caller_correlation_id text := current_setting('app.correlation_id', true);
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' OR jsonb_array_length(p_events) NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'p_events must be a JSON array of 1 to 100 events' USING ERRCODE = '22023';
    END IF;
    IF p_correlation_ids IS NOT NULL AND cardinality(p_correlation_ids) <> jsonb_array_length(p_events) THEN
        RAISE EXCEPTION 'p_correlation_ids must be NULL or hold one id per event' USING ERRCODE = '22023';
    END IF;
    v_events := ARRAY(SELECT e FROM jsonb_array_elements(p_events) AS e);
    v_outcomes := array_fill(NULL::text, ARRAY[cardinality(v_events)]);
    FOR v_i IN
        SELECT u.ord::int FROM unnest(v_events) WITH ORDINALITY AS u (e, ord)
        ORDER BY stripe.lock_order_key(u.e), u.e ->> 'id', u.ord
    LOOP
        IF p_correlation_ids IS NOT NULL THEN
            PERFORM set_config('app.correlation_id', coalesce(p_correlation_ids[v_i], ''), true);
        END IF;
        v_outcomes[v_i] := stripe.ingest(v_events[v_i]);
    END LOOP;
    IF p_correlation_ids IS NOT NULL THEN
        PERFORM set_config('app.correlation_id', coalesce(v_caller_correlation_id, ''), true);
    END IF;
    RETURN v_outcomes;
END;
$$;
COMMENT ON FUNCTION api.ingest_stripe_events(jsonb, text[]) IS
'Group commit of verified Stripe events (a JSON array): each stored once by id and applied as by api.ingest_stripe_event, all in one transaction, outcomes in the order given; any error rolls back all of them. 22023 unless an array of 1 to 100 events (and NULL or one correlation id each).';

CREATE OR REPLACE FUNCTION stripe.record_failure(p_event jsonb, p_sqlstate text, p_message text)
RETURNS void
LANGUAGE plpgsql
AS $$
-- A failed attempt at an event (the shim's delivery, or the retry job's), kept with its
-- payload and error, retried as stripe.after_attempt says.
DECLARE
    v_event_id text := p_event ->> 'id';
BEGIN
    PERFORM stripe.check_event(p_event);
    IF p_sqlstate IS NOT NULL AND p_sqlstate !~ '^[0-9A-Z]{5}$' THEN
        RAISE EXCEPTION 'p_sqlstate must be five characters [0-9A-Z], got %', left(p_sqlstate, 20)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO stripe.events AS e (
        event_id, type, livemode, payload, status, attempts, last_error, last_sqlstate,
        next_attempt_at, correlation_id
    )
    SELECT v_event_id, p_event ->> 'type', stripe.livemode(p_event), p_event, a.status, 1,
           left(coalesce(p_message, 'unknown error'), 2000), p_sqlstate, a.next_attempt_at,
           left(current_setting('app.correlation_id', true), 200)
    FROM stripe.after_attempt('failed', 1) AS a
    ON CONFLICT (event_id) DO UPDATE
        SET (status, next_attempt_at) = (
                SELECT a.status, a.next_attempt_at FROM stripe.after_attempt('failed', e.attempts + 1) AS a
            ),
            attempts = e.attempts + 1,
            last_error = excluded.last_error,
            last_sqlstate = excluded.last_sqlstate
        -- A delivery that succeeded meanwhile wins over this failure.
        WHERE e.status NOT IN ('processed', 'ignored');
END;
$$;
CREATE OR REPLACE FUNCTION api.record_stripe_event_failure(p_event jsonb, p_sqlstate text, p_message text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM stripe.record_failure(p_event, p_sqlstate, p_message);
END;
$$;
COMMENT ON FUNCTION api.record_stripe_event_failure(jsonb, text, text) IS
'Called in a fresh transaction after api.ingest_stripe_event failed: keeps the payload, counts the attempt, keeps the error and schedules a retry with capped exponential backoff (dead after stripe.attempts_max()).';
