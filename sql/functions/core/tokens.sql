-- Refresh-token families (contract: "Errors, health, tokens"). The caller passes
-- HMAC-SHA256(pepper, token); a token is never stored or seen here.

CREATE OR REPLACE FUNCTION core.require_token_hash(p_hash bytea, p_name text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
BEGIN
    PERFORM core.require(p_hash, p_name);
    IF length(p_hash) <> 32 THEN
        RAISE EXCEPTION '% must be a 32-byte HMAC-SHA256, got % bytes', p_name, length(p_hash) USING ERRCODE = '22023';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION api.issue_refresh_token(p_user_id text, p_token_hash bytea, p_ttl interval DEFAULT '30 days')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_family_id uuid := gen_random_uuid();
BEGIN
    PERFORM core.require_text(p_user_id, 'p_user_id', 200);
    PERFORM core.require_token_hash(p_token_hash, 'p_token_hash');
    PERFORM core.require_interval(p_ttl, 'p_ttl', interval '1 minute', interval '365 days');
    -- A hash already issued (to anyone) is a bad argument, 22023, not a raw 23505.
    INSERT INTO core.refresh_tokens (token_hash, family_id, user_id, expires_at)
    VALUES (p_token_hash, v_family_id, p_user_id, clock_timestamp() + p_ttl)
    ON CONFLICT (token_hash) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'p_token_hash was already issued' USING ERRCODE = '22023';
    END IF;
    RETURN v_family_id;
END;
$$;
COMMENT ON FUNCTION api.issue_refresh_token(text, bytea, interval) IS
'Starts a token family for a user (at login) from the token''s HMAC-SHA256; returns the family id. 22023 when that hash was already issued (nothing written).';

CREATE OR REPLACE FUNCTION api.rotate_refresh_token(p_old_hash bytea, p_new_hash bytea)
RETURNS TABLE (outcome text, user_id text, family_id uuid)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- 'rotated': p_new_hash replaces p_old_hash (same family, same expiry).
-- Grace: the same old token presented again within 10 s of its rotation is a client that
-- lost the answer; its earlier replacement is revoked and p_new_hash replaces it, so the
-- family still has one live token.
-- 'reuse_detected': an already rotated token came back more than 10 s after its rotation:
-- someone else holds a copy. The whole family is revoked and a critical error logged, and
-- this is committed (an error would roll the revocation back); the caller answers 401 RA002.
-- RA001: unknown, expired or revoked. 22023: p_new_hash exists already (nothing written).
DECLARE
    v_old core.refresh_tokens;
BEGIN
    PERFORM core.require_token_hash(p_old_hash, 'p_old_hash');
    PERFORM core.require_token_hash(p_new_hash, 'p_new_hash');
    SELECT * INTO v_old FROM core.refresh_tokens AS t WHERE t.token_hash = p_old_hash FOR UPDATE;
    IF NOT FOUND OR v_old.revoked_at IS NOT NULL OR v_old.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'refresh token unknown, expired or revoked' USING ERRCODE = 'RA001';
    END IF;
    IF v_old.rotated_at IS NOT NULL AND v_old.rotated_at < clock_timestamp() - interval '10 seconds' THEN
        UPDATE core.refresh_tokens AS t
        SET revoked_at = clock_timestamp(), revoked_reason = 'reuse detected'
        WHERE t.family_id = v_old.family_id AND t.revoked_at IS NULL;
        PERFORM core.log_error('critical', 'auth.refresh', 'refresh token reuse detected; token family revoked',
                              NULL, jsonb_build_object('user_id', v_old.user_id, 'family_id', v_old.family_id));
        RETURN QUERY SELECT 'reuse_detected'::text, v_old.user_id, v_old.family_id;
        RETURN;
    END IF;
    IF v_old.rotated_at IS NOT NULL THEN
        UPDATE core.refresh_tokens AS t
        SET revoked_at = clock_timestamp(), revoked_reason = 'replaced within the grace period'
        WHERE t.token_hash = v_old.replaced_by AND t.revoked_at IS NULL;
    END IF;
    UPDATE core.refresh_tokens AS t
    SET rotated_at = coalesce(t.rotated_at, clock_timestamp()), replaced_by = p_new_hash
    WHERE t.token_hash = p_old_hash;
    -- A new hash that exists already (p_old_hash itself or any other) is a bad argument:
    -- 22023, and the error undoes this call's updates too (nothing half-written).
    INSERT INTO core.refresh_tokens (token_hash, family_id, user_id, expires_at)
    VALUES (p_new_hash, v_old.family_id, v_old.user_id, v_old.expires_at)
    ON CONFLICT (token_hash) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'p_new_hash was already issued' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY SELECT 'rotated'::text, v_old.user_id, v_old.family_id;
END;
$$;
COMMENT ON FUNCTION api.rotate_refresh_token(bytea, bytea) IS
'Rotates a refresh token: ''rotated'' (the new hash replaces the old); ''reuse_detected'' when a rotated token comes back more than 10 s after its rotation (family revoked, critical error logged, committed: answer 401 RA002); within 10 s the same old token is a client that lost the answer and rotates again (the earlier replacement is revoked). RA001 unknown, expired or revoked; 22023 when p_new_hash was already issued (nothing written).';

CREATE OR REPLACE FUNCTION api.revoke_refresh_tokens(p_user_id text)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count int;
BEGIN
    PERFORM core.require_text(p_user_id, 'p_user_id', 200);
    UPDATE core.refresh_tokens AS t
    SET revoked_at = clock_timestamp(), revoked_reason = 'revoked for the user'
    WHERE t.user_id = p_user_id AND t.revoked_at IS NULL AND t.expires_at > clock_timestamp();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION api.revoke_refresh_tokens(text) IS 'Revokes every live refresh token of a user (logout everywhere); returns how many.';

CREATE OR REPLACE FUNCTION core.purge_refresh_tokens(p_batch_size int DEFAULT 10000)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Deletes tokens that expired more than 7 days ago (kept that long to explain a 401).
DECLARE
    v_deleted int;
BEGIN
    DELETE FROM core.refresh_tokens
    WHERE token_hash IN (
        SELECT t.token_hash FROM core.refresh_tokens AS t
        WHERE t.expires_at < now() - interval '7 days'
        ORDER BY t.expires_at
        LIMIT p_batch_size
    );
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('deleted', v_deleted);
END;
$$;
