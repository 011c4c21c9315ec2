-- Stripe payments applied to bookings and the ledger (contract: "Stripe"). Every handler
-- runs inside the transaction that stores the event, holds the booking's row lock, and is
-- safe to run again: the ledger takes each Stripe object once, and a status only moves
-- along booking.booking_transitions.

-- Signatures replaced by a later version of this file (CREATE OR REPLACE would add an overload),
-- and functions moved to a lower layer (stripe.enqueue_refund is booking.enqueue_refund).
DROP FUNCTION IF EXISTS stripe.booking_for(jsonb, text);
DROP FUNCTION IF EXISTS stripe.enqueue_refund(uuid, text, text);
DROP FUNCTION IF EXISTS stripe.on_payment_succeeded(text, uuid, text, bigint, text);

CREATE OR REPLACE FUNCTION stripe.lock_booking_for(p_object jsonb, p_payment_intent_id text)
RETURNS booking.bookings
LANGUAGE plpgsql
AS $$
-- The booking an object belongs to, row-locked (every handler changes it or must see it
-- settled): metadata.booking_id, else the booking that recorded the PaymentIntent, else
-- the booking its charge was posted for. All fields NULL when there is none.
DECLARE
    v_text text := p_object #>> '{metadata,booking_id}';
    v_booking booking.bookings;
BEGIN
    IF v_text ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        SELECT * INTO v_booking FROM booking.bookings AS b WHERE b.booking_id = v_text::uuid FOR UPDATE;
        IF FOUND THEN
            RETURN v_booking;
        END IF;
    END IF;
    IF p_payment_intent_id IS NULL THEN
        RETURN v_booking;
    END IF;
    SELECT * INTO v_booking FROM booking.bookings AS b WHERE b.payment_intent_id = p_payment_intent_id FOR UPDATE;
    IF FOUND THEN
        RETURN v_booking;
    END IF;
    SELECT * INTO v_booking
    FROM booking.bookings AS b
    WHERE b.booking_id = (
        SELECT t.booking_id FROM ledger.transactions AS t
        WHERE t.kind = 'charge' AND t.stripe_object_id = p_payment_intent_id
    )
    FOR UPDATE;
    RETURN v_booking;
END;
$$;

CREATE OR REPLACE FUNCTION stripe.money_amount(p_what text, p_value jsonb, p_errcode text)
RETURNS bigint
LANGUAGE plpgsql
IMMUTABLE
AS $$
-- The amount of a Stripe object that moves money: a JSON integer of 1 to 100000000000
-- minor units (what ledger.post accepts). Anything else (absent, null, a string, 0, -5,
-- 12.5) raises p_errcode: RW001 for an event (not a valid Stripe event: stored nothing,
-- 400 over HTTP, never a failed event retried 20 times), 22023 for an api argument.
-- Checked before anything compares it with the booking, so a bad value is never
-- mistaken for a broken invariant (RX001).
DECLARE
    -- Nested tests, not one OR: the cast must only ever see digits.
    v_text text := CASE WHEN jsonb_typeof(p_value) = 'number' THEN p_value::text END;
    v_valid boolean := false;
BEGIN
    IF v_text ~ '^[0-9]{1,12}$' THEN
        v_valid := v_text::bigint BETWEEN 1 AND 100000000000;
    END IF;
    IF NOT v_valid THEN
        RAISE EXCEPTION '% amount must be an integer of 1 to 100000000000 minor units, got %', p_what,
            coalesce(left(p_value::text, 40), 'nothing')
            USING ERRCODE = p_errcode;
    END IF;
    RETURN v_text::bigint;
END;
$$;

CREATE OR REPLACE FUNCTION stripe.money_currency(p_what text, p_value jsonb, p_errcode text)
RETURNS text
LANGUAGE plpgsql
STABLE
AS $$
-- The currency of a Stripe object that moves money: one of the codes Stripe charges in
-- (core.currencies). 'zzz', '', 'u', 10,000 characters or null raise p_errcode (see
-- stripe.money_amount) instead of reaching a column's check (23514) or a comparison.
BEGIN
    IF jsonb_typeof(p_value) IS DISTINCT FROM 'string'
        OR NOT EXISTS (SELECT FROM core.currencies AS c WHERE c.code = p_value #>> '{}') THEN
        RAISE EXCEPTION '% currency must be a lowercase ISO 4217 code Stripe charges in, got %', p_what,
            coalesce(left(p_value::text, 40), 'nothing')
            USING ERRCODE = p_errcode;
    END IF;
    RETURN p_value #>> '{}';
END;
$$;

CREATE OR REPLACE FUNCTION stripe.refuse_foreign_currency(
    p_event_id text, p_kind text, p_object_id text, p_amount bigint, p_currency text, p_booking booking.bookings
)
RETURNS text
LANGUAGE plpgsql
AS $$
-- Money in another currency than its booking's (a payment, refund or dispute in eur for a
-- usd booking) is never applied: booking it would leave the booking's own money where it
-- was (a 'refunded' booking whose usd revenue stays booked) or confirm a booking nobody
-- paid for in its currency. It is not a broken invariant of ours (RX001, a 500 and a
-- failed event retried 20 times for an answer that cannot change) nor a malformed event
-- (its values are valid): the event is stored 'ignored', nothing goes to the ledger, the
-- booking is unchanged, and a critical error (with its alert) tells on-call to settle it
-- by hand in Stripe. Returns 'ignored'.
BEGIN
    PERFORM core.log_error(
        'critical', 'stripe.' || p_kind,
        pg_catalog.format('Stripe %s "%s" is in %s but its booking is in %s: not applied; settle it in Stripe',
                          p_kind, p_object_id, p_currency, p_booking.currency),
        NULL,
        jsonb_build_object('stripe_event_id', p_event_id, 'stripe_object_id', p_object_id, 'amount', p_amount,
                           'currency', p_currency, 'booking_id', p_booking.booking_id,
                           'booking_currency', p_booking.currency));
    RETURN 'ignored';
END;
$$;

CREATE OR REPLACE FUNCTION stripe.refuse_other_figures(
    p_event_id text, p_kind text, p_object_id text, p_amount bigint, p_currency text, p_booking booking.bookings
)
RETURNS text
LANGUAGE plpgsql
AS $$
-- A Stripe object booked before, announced again with other figures (amount, currency or
-- booking): Stripe never changes them, so this announcement cannot be applied, and booking
-- it would be ledger.post's RX001 (a 500, and a failed event retried 20 times for an
-- answer that cannot change). As for money in another currency
-- (stripe.refuse_foreign_currency): stored 'ignored', nothing booked, the booking unchanged,
-- a critical error for on-call. NULL when nothing was booked or nothing differs. Called
-- with the booking locked, so a concurrent first announcement has committed or not begun.
DECLARE
    v_posted ledger.transactions;
BEGIN
    SELECT * INTO v_posted FROM ledger.transactions AS t WHERE t.kind = p_kind AND t.stripe_object_id = p_object_id;
    IF NOT FOUND OR (v_posted.amount, v_posted.currency, v_posted.booking_id)
        IS NOT DISTINCT FROM (p_amount, p_currency, p_booking.booking_id) THEN
        RETURN NULL;
    END IF;
    PERFORM core.log_error(
        'critical', 'stripe.' || p_kind,
        pg_catalog.format('Stripe %s "%s" was booked as %s %s and is now announced as %s %s: not applied',
                          p_kind, p_object_id, v_posted.amount, v_posted.currency, p_amount, p_currency),
        NULL,
        jsonb_build_object('stripe_event_id', p_event_id, 'stripe_object_id', p_object_id, 'amount', p_amount,
                           'currency', p_currency, 'booking_id', p_booking.booking_id,
                           'booked_amount', v_posted.amount, 'booked_currency', v_posted.currency,
                           'booked_booking_id', v_posted.booking_id));
    RETURN 'ignored';
END;
$$;

CREATE OR REPLACE FUNCTION stripe.on_payment_succeeded(
    p_event_id text, p_booking booking.bookings, p_payment_intent_id text, p_amount bigint, p_currency text
)
RETURNS text
LANGUAGE plpgsql
AS $$
-- Money arrived (amount and currency already checked valid by the caller). Booked once per
-- PaymentIntent; the booking is confirmed if it is payable or its units can be taken
-- again; otherwise the money is unallocated and goes back. In another currency than the
-- booking's: stripe.refuse_foreign_currency.
DECLARE
    v_booking_id uuid := p_booking.booking_id;
    v_booked boolean;
    v_paid boolean;
BEGIN
    SELECT
        EXISTS (SELECT FROM ledger.transactions AS t WHERE t.kind = 'charge' AND t.stripe_object_id = p_payment_intent_id),
        EXISTS (
            SELECT FROM ledger.payment_totals AS p
            WHERE p.booking_id = v_booking_id AND p.paid > 0 AND NOT p.unallocated
        )
    INTO v_booked, v_paid;
    IF v_booked THEN
        RETURN 'processed';  -- another announcement of a payment already booked
    END IF;
    IF p_currency <> p_booking.currency THEN
        RETURN stripe.refuse_foreign_currency(p_event_id, 'payment', p_payment_intent_id, p_amount, p_currency,
                                              p_booking);
    END IF;
    -- Same currency, another amount: our own PaymentIntent was created with the booking's
    -- amount, so this is a broken invariant (the values themselves were checked valid).
    IF (p_amount, p_currency) IS DISTINCT FROM (p_booking.amount, p_booking.currency) THEN
        RAISE EXCEPTION 'PaymentIntent % paid % %, booking % costs % %', p_payment_intent_id, p_amount, p_currency,
            v_booking_id, p_booking.amount, p_booking.currency
            USING ERRCODE = 'RX001';
    END IF;
    IF v_paid THEN
        -- Paid twice (two PaymentIntents): the second payment goes back.
        PERFORM ledger.post_charge(v_booking_id, p_payment_intent_id, p_amount, p_currency, p_unallocated => true,
                                   p_stripe_event_id => p_event_id);
        PERFORM booking.enqueue_refund(v_booking_id, p_payment_intent_id, 'duplicate_payment');
        RETURN 'processed';
    END IF;
    IF p_booking.status IN ('pending_payment', 'payment_failed', 'expired')
        AND booking.reserve_for_late_payment(v_booking_id) THEN
        PERFORM ledger.post_charge(v_booking_id, p_payment_intent_id, p_amount, p_currency, p_unallocated => false,
                                   p_stripe_event_id => p_event_id);
        PERFORM booking.apply_event(v_booking_id, 'payment_succeeded', p_event_id);
        RETURN 'processed';
    END IF;
    -- No units for it (or the booking was cancelled): keep the money apart, send it back.
    PERFORM ledger.post_charge(v_booking_id, p_payment_intent_id, p_amount, p_currency, p_unallocated => true,
                                   p_stripe_event_id => p_event_id);
    -- Entering refund_pending enqueues the refund of every payment the booking received
    -- (booking.after_booking_change); in any other case this one is sent back from here.
    IF booking.apply_event(v_booking_id, 'payment_succeeded_without_capacity', p_event_id, p_if_allowed => true)
        IS DISTINCT FROM 'refund_pending' OR p_booking.status = 'refund_pending' THEN
        PERFORM booking.enqueue_refund(v_booking_id, p_payment_intent_id, 'unallocated_payment');
    END IF;
    RETURN 'processed';
END;
$$;

CREATE OR REPLACE FUNCTION stripe.on_refund(p_event_id text, p_refund jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
-- A succeeded refund, booked once by refund id against the account its charge went to;
-- deferred until the payment it refunds has been booked. RW001 when its amount or currency
-- is not valid; 'ignored' (and a critical error) when in another currency than its
-- booking's (stripe.refuse_foreign_currency).
DECLARE
    v_pi text := p_refund ->> 'payment_intent';
    v_booking booking.bookings;
    v_booking_id uuid;
    v_unallocated boolean;
    v_charged bigint;
    v_refunded bigint;
    v_amount bigint;
    v_currency text;
    v_refused text;
BEGIN
    IF p_refund ->> 'status' IS DISTINCT FROM 'succeeded' OR jsonb_typeof(p_refund -> 'id') <> 'string' THEN
        RETURN 'ignored';
    END IF;
    -- A succeeded refund is applied: its values must be valid first (RW001 otherwise).
    v_amount := stripe.money_amount('a refund', p_refund -> 'amount', 'RW001');
    v_currency := stripe.money_currency('a refund', p_refund -> 'currency', 'RW001');
    v_unallocated := ledger.charge_is_unallocated(v_pi);
    IF v_unallocated IS NULL THEN
        RETURN 'deferred';
    END IF;
    v_booking := stripe.lock_booking_for(p_refund, v_pi);
    v_booking_id := v_booking.booking_id;
    IF v_currency <> v_booking.currency THEN
        RETURN stripe.refuse_foreign_currency(p_event_id, 'refund', p_refund ->> 'id', v_amount, v_currency, v_booking);
    END IF;
    v_refused := stripe.refuse_other_figures(p_event_id, 'refund', p_refund ->> 'id', v_amount, v_currency, v_booking);
    IF v_refused IS NOT NULL THEN
        RETURN v_refused;
    END IF;
    IF ledger.post_refund(v_booking_id, p_refund ->> 'id', v_pi, v_amount, v_currency, p_event_id) IS NULL THEN
        -- Booked before (the worker's record and its refund.* events announce one refund):
        -- the booking moved then; moving it again would add a history row for nothing.
        RETURN 'processed';
    END IF;
    -- Compare what went back with what came in on the same side (allocated or not).
    SELECT coalesce(sum(p.paid), 0)::bigint, coalesce(sum(p.refunded), 0)::bigint
    INTO v_charged, v_refunded
    FROM ledger.payment_totals AS p
    WHERE p.booking_id = v_booking_id AND coalesce(p.unallocated, false) = v_unallocated;
    IF v_unallocated THEN
        -- Money no booking kept: it only decides the state of a booking waiting for it to go back.
        IF v_refunded >= v_charged AND v_booking.status = 'refund_pending' THEN
            PERFORM booking.apply_event(v_booking_id, 'full_refund', p_event_id, p_if_allowed => true);
        END IF;
    ELSE
        PERFORM booking.apply_event(
            v_booking_id, CASE WHEN v_refunded >= v_charged THEN 'full_refund' ELSE 'partial_refund' END, p_event_id, p_if_allowed => true);
    END IF;
    RETURN 'processed';
END;
$$;

CREATE OR REPLACE FUNCTION stripe.on_dispute(p_event_id text, p_type text, p_dispute jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
-- Disputes: created withdraws the amount; closed as won gives it back, as lost keeps it
-- withdrawn. Deferred until the payment (or, for closed, the dispute) has been booked.
-- RW001 when the amount or currency is not valid (checked first, as for refunds);
-- 'ignored' with a critical error when in another currency than its booking's.
DECLARE
    v_pi text := p_dispute ->> 'payment_intent';
    v_id text := p_dispute ->> 'id';
    v_booking booking.bookings;
    v_booking_id uuid;
    v_amount bigint := stripe.money_amount('a dispute', p_dispute -> 'amount', 'RW001');
    v_currency text := stripe.money_currency('a dispute', p_dispute -> 'currency', 'RW001');
    v_refused text;
BEGIN
    IF ledger.charge_is_unallocated(v_pi) IS NULL THEN
        RETURN 'deferred';
    END IF;
    v_booking := stripe.lock_booking_for(p_dispute, v_pi);
    v_booking_id := v_booking.booking_id;
    IF v_currency <> v_booking.currency THEN
        RETURN stripe.refuse_foreign_currency(p_event_id, 'dispute', v_id, v_amount, v_currency, v_booking);
    END IF;
    IF p_type = 'charge.dispute.created' THEN
        v_refused := stripe.refuse_other_figures(p_event_id, 'dispute', v_id, v_amount, v_currency, v_booking);
        IF v_refused IS NOT NULL THEN
            RETURN v_refused;
        END IF;
        PERFORM ledger.post_dispute(v_booking_id, v_id, v_pi, v_amount, v_currency, p_event_id);
        PERFORM booking.apply_event(v_booking_id, 'dispute_opened', p_event_id, p_if_allowed => true);
        RETURN 'processed';
    END IF;
    IF NOT EXISTS (SELECT FROM ledger.transactions AS t WHERE t.kind = 'dispute' AND t.stripe_object_id = v_id) THEN
        RETURN 'deferred';
    END IF;
    IF p_dispute ->> 'status' = 'won' THEN
        v_refused := stripe.refuse_other_figures(p_event_id, 'dispute_reversal', v_id, v_amount, v_currency, v_booking);
        IF v_refused IS NOT NULL THEN
            RETURN v_refused;
        END IF;
        PERFORM ledger.post_dispute_reversal(v_booking_id, v_id, v_pi, v_amount, v_currency, p_event_id);
        PERFORM booking.apply_event(v_booking_id, 'dispute_won', p_event_id, p_if_allowed => true);
    ELSIF p_dispute ->> 'status' = 'lost' THEN
        PERFORM booking.apply_event(v_booking_id, 'dispute_lost', p_event_id, p_if_allowed => true);
    ELSE
        RETURN 'ignored';
    END IF;
    RETURN 'processed';
END;
$$;

CREATE OR REPLACE FUNCTION stripe.dispatch(p_event_id text, p_type text, p_object jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
-- What an event means: the outcome 'processed', 'ignored' or 'deferred'.
DECLARE
    v_pi text;
    v_booking booking.bookings;
    v_status text;
BEGIN
    IF p_type IN ('charge.refunded', 'refund.created', 'refund.updated') THEN
        IF p_type = 'charge.refunded' THEN
            -- Each refund object in the charge, each booked once by its own id.
            IF jsonb_typeof(p_object #> '{refunds,data}') IS DISTINCT FROM 'array' THEN
                RETURN 'ignored';
            END IF;
            SELECT CASE
                WHEN bool_or(o = 'deferred') THEN 'deferred'
                WHEN bool_or(o = 'processed') THEN 'processed'
                ELSE 'ignored'
            END INTO v_status
            FROM (
                SELECT stripe.on_refund(p_event_id,
                    r || jsonb_build_object('payment_intent', coalesce(r ->> 'payment_intent', p_object ->> 'payment_intent')))
                    AS o
                FROM jsonb_array_elements(p_object #> '{refunds,data}') AS r
            ) AS outcomes;
            RETURN coalesce(v_status, 'ignored');
        END IF;
        RETURN stripe.on_refund(p_event_id, p_object);
    END IF;
    IF p_type IN ('charge.dispute.created', 'charge.dispute.closed') THEN
        RETURN stripe.on_dispute(p_event_id, p_type, p_object);
    END IF;
    IF p_type NOT IN (
        'payment_intent.succeeded', 'payment_intent.payment_failed', 'payment_intent.canceled',
        'checkout.session.completed', 'checkout.session.async_payment_succeeded',
        'checkout.session.async_payment_failed', 'checkout.session.expired'
    ) THEN
        RETURN 'ignored';
    END IF;
    v_pi := CASE WHEN p_type LIKE 'payment_intent.%' THEN p_object ->> 'id' ELSE p_object ->> 'payment_intent' END;
    v_booking := stripe.lock_booking_for(p_object, v_pi);
    IF v_booking.booking_id IS NULL THEN
        RETURN 'ignored';  -- not a payment for one of our bookings
    END IF;
    IF p_type IN ('payment_intent.succeeded', 'checkout.session.async_payment_succeeded')
        OR (p_type = 'checkout.session.completed' AND p_object ->> 'payment_status' = 'paid') THEN
        IF v_pi IS NULL THEN
            RETURN 'ignored';
        END IF;
        -- The values first (RW001 when not valid), then what they mean for the booking.
        RETURN stripe.on_payment_succeeded(
            p_event_id, v_booking, v_pi,
            stripe.money_amount('a payment',
                coalesce(nullif(p_object -> 'amount_received', 'null'), nullif(p_object -> 'amount_total', 'null'),
                         p_object -> 'amount'),
                'RW001'),
            stripe.money_currency('a payment', p_object -> 'currency', 'RW001')
        );
    ELSIF p_type IN ('payment_intent.payment_failed', 'checkout.session.async_payment_failed') THEN
        PERFORM booking.apply_event(v_booking.booking_id, 'payment_failed', p_event_id, p_if_allowed => true);
        RETURN 'processed';
    ELSIF p_type IN ('payment_intent.canceled', 'checkout.session.expired') THEN
        PERFORM booking.apply_event(v_booking.booking_id, 'payment_canceled', p_event_id, p_if_allowed => true);
        RETURN 'processed';
    END IF;
    RETURN 'ignored';  -- a checkout session completed but not paid yet (async methods)
END;
$$;

-- ---------------------------------------------------------------------------------------
-- api

CREATE OR REPLACE FUNCTION api.payment_intent_params(p_booking_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_booking booking.bookings;
BEGIN
    PERFORM core.require(p_booking_id, 'p_booking_id');
    SELECT * INTO v_booking FROM booking.bookings AS b WHERE b.booking_id = p_booking_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'booking % not found', p_booking_id USING ERRCODE = 'RB005';
    END IF;
    IF v_booking.status NOT IN ('pending_payment', 'payment_failed') OR v_booking.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'booking % is not payable now', p_booking_id
            USING ERRCODE = 'RB002',
                  DETAIL = pg_catalog.format('status %s, expires_at %s', v_booking.status, v_booking.expires_at);
    END IF;
    RETURN jsonb_build_object(
        'amount', v_booking.amount,
        'currency', v_booking.currency,
        'metadata', jsonb_build_object('booking_id', v_booking.booking_id)
    );
END;
$$;
COMMENT ON FUNCTION api.payment_intent_params(uuid) IS
'What to create a Stripe PaymentIntent with: {"amount", "currency", "metadata": {"booking_id"}}; RB002 if the booking is not payable now (status or deadline), RB005 unknown.';

CREATE OR REPLACE FUNCTION api.record_payment_intent(
    p_booking_id uuid, p_payment_intent_id text, p_client_secret text, p_status text
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- The client secret is not stored: only the caller's idempotent answer carries it.
BEGIN
    PERFORM core.require(p_booking_id, 'p_booking_id');
    PERFORM core.require_text(p_payment_intent_id, 'p_payment_intent_id', 255);
    PERFORM core.require_text(p_client_secret, 'p_client_secret', 500);
    PERFORM core.require_text(p_status, 'p_status', 50);
    -- A PaymentIntent belongs to one booking (bookings_payment_intent_key). Another
    -- booking's is a bad argument (22023, a 400), not a state of this booking (RB002): no
    -- retry or wait makes it right, and Stripe made the PaymentIntent for that other
    -- booking's metadata. The block also turns the race (two bookings recording the same
    -- id at once, the second waits and hits the key) into the same 22023; the UPDATE is
    -- one statement, so nothing is half-written.
    BEGIN
        UPDATE booking.bookings
        SET payment_intent_id = p_payment_intent_id, payment_intent_status = p_status
        WHERE booking_id = p_booking_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'PaymentIntent % is already recorded for another booking', p_payment_intent_id
            USING ERRCODE = '22023';
    END;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'booking % not found', p_booking_id USING ERRCODE = 'RB005';
    END IF;
END;
$$;
COMMENT ON FUNCTION api.record_payment_intent(uuid, text, text, text) IS
'Records the PaymentIntent created for a booking (its latest one; payments on earlier ones are still found by metadata.booking_id). RB005 unknown booking; 22023 when the PaymentIntent is already recorded for another booking (a bad argument, not a booking state: nothing is written).';

CREATE OR REPLACE FUNCTION api.refunds_due(p_booking_id uuid, p_payment_intent_id text DEFAULT NULL)
RETURNS TABLE (payment_intent_id text, amount bigint, currency text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- What a stripe.refund job must send back, per PaymentIntent, as the ledger says now:
-- charged minus refunded. For one PaymentIntent when given (every job names one); else
-- everything the booking received, if it is waiting for its money to go back.
BEGIN
    PERFORM core.require(p_booking_id, 'p_booking_id');
    RETURN QUERY
    SELECT p.payment_intent_id, (sum(p.paid) - sum(p.refunded))::bigint, min(p.currency)::text
    FROM ledger.payment_totals AS p
    WHERE p.booking_id = p_booking_id
      AND (p.paid > 0 OR p.refunded > 0)
      AND (p.payment_intent_id = p_payment_intent_id
           OR (p_payment_intent_id IS NULL
               AND (SELECT b.status FROM booking.bookings AS b WHERE b.booking_id = p_booking_id) = 'refund_pending'))
    GROUP BY p.payment_intent_id
    HAVING sum(p.paid) > sum(p.refunded);
END;
$$;
COMMENT ON FUNCTION api.refunds_due(uuid, text) IS
'For the refund worker: per PaymentIntent, what is still to be refunded (charged minus refunded in the ledger), for the given PaymentIntent or, with NULL, for a booking in refund_pending.';

CREATE OR REPLACE FUNCTION api.record_stripe_refund(p_refund jsonb)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- The refund worker records the refund it created, as its webhook would (refund id keyed,
-- so the later refund.created event is a no-op): processed, ignored or deferred.
-- Bad values are the caller's (22023), checked before anything: an amount that is not 1
-- to 100000000000 minor units, a currency Stripe does not charge in. A refund in another
-- currency than its booking's is 22023 too, not the event path's stored 'ignored': there
-- is no event to store here, and the worker must hear at once that what it sends back
-- does not match what came in (its job fails and is retried, visibly, in jobs.jobs).
DECLARE
    v_currency text;
    v_booking booking.bookings;
    v_amount bigint;
    v_posted record;
BEGIN
    IF jsonb_typeof(p_refund) IS DISTINCT FROM 'object' OR jsonb_typeof(p_refund -> 'id') IS DISTINCT FROM 'string'
        OR jsonb_typeof(p_refund -> 'payment_intent') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'p_refund must be a Stripe refund object with an id and a payment_intent'
            USING ERRCODE = '22023';
    END IF;
    IF p_refund ->> 'status' = 'succeeded' THEN
        v_amount := stripe.money_amount('p_refund', p_refund -> 'amount', '22023');
        v_currency := stripe.money_currency('p_refund', p_refund -> 'currency', '22023');
        -- A refund id booked before with other figures: Stripe never changes a refund's
        -- amount, currency or payment, so what the worker sends is not that refund. The
        -- caller's mistake (22023, nothing written), not a broken ledger (ledger.post's RX001).
        SELECT t.amount, t.currency, t.payment_intent_id INTO v_posted
        FROM ledger.transactions AS t
        WHERE t.kind = 'refund' AND t.stripe_object_id = p_refund ->> 'id';
        IF FOUND AND (v_posted.amount, v_posted.currency, v_posted.payment_intent_id)
            IS DISTINCT FROM (v_amount, v_currency, p_refund ->> 'payment_intent') THEN
            RAISE EXCEPTION 'refund % was booked before with other figures', p_refund ->> 'id'
                USING ERRCODE = '22023',
                      DETAIL = pg_catalog.format('booked %s %s of %s, now %s %s of %s', v_posted.amount,
                                                 v_posted.currency, v_posted.payment_intent_id, v_amount, v_currency,
                                                 p_refund ->> 'payment_intent');
        END IF;
        IF ledger.charge_is_unallocated(p_refund ->> 'payment_intent') IS NOT NULL THEN
            v_booking := stripe.lock_booking_for(p_refund, p_refund ->> 'payment_intent');
            IF v_currency <> v_booking.currency THEN
                RAISE EXCEPTION 'refund % is in %, its booking % in %', p_refund ->> 'id', v_currency,
                    v_booking.booking_id, v_booking.currency
                    USING ERRCODE = '22023';
            END IF;
        END IF;
    END IF;
    RETURN stripe.on_refund(NULL, p_refund);
END;
$$;
COMMENT ON FUNCTION api.record_stripe_refund(jsonb) IS
'Books a succeeded Stripe refund created by the worker (once per refund id, like its refund.* event); the booking becomes refunded or partially_refunded. 22023 when it is not a refund object, its amount or currency is not valid, its currency is not its booking''s, or the refund id was booked before with other figures (nothing written).';
