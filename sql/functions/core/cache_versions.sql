-- Cache versions (contract: "Catalog and cache versions"): one counter per namespace, bumped
-- by booking's announcements at commit (sql/functions/booking/versions.sql) and api.bump_cache_version.

CREATE OR REPLACE FUNCTION core.bump_cache_version(p_namespace text)
RETURNS bigint
LANGUAGE sql
AS $$
    -- The row lock lasts until commit: two bumps of one namespace take turns, so versions
    -- are in commit order and a reader never sees one go backwards.
    INSERT INTO core.cache_versions AS v (namespace, version)
    VALUES (p_namespace, 1)
    ON CONFLICT (namespace) DO UPDATE SET version = v.version + 1
    RETURNING v.version;
$$;
