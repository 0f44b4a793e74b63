-- The events table's rules move from table CHECK constraints to domains, unchanged.
--
-- Why: PostgreSQL re-reads a table's CHECK expressions from their stored text (stringToNode) for
-- every INSERT statement, while a domain's checks are parsed once per backend and cached. With
-- one INSERT per append, that re-reading was about a tenth of PostgreSQL's time at 1,000 appends/s
-- and under ingestion load (docs/benchmarks.md, session 11). The rules are the same, so every
-- append path (the server's INSERTs, the SQL functions, another application's INSERT) is still
-- refused with SQLSTATE 23514 for the same values; only the message names the domain.
--
-- The migration neither rewrites the table nor rebuilds its indexes: a column may change to a
-- domain over its own type in place as long as the domain has no constraint yet, so each domain
-- is created bare, the columns change, and then the constraints are added NOT VALID and
-- validated (one read of the table each). Rows already stored passed the same rules.
--
-- Clients see the base types (PostgreSQL describes a domain column by its base type), but a
-- plpgsql `RETURN QUERY` compares types exactly: `append_batch` casts what it returns.

CREATE DOMAIN flightdeck.stream_name AS text;
CREATE DOMAIN flightdeck.event_type AS text;
CREATE DOMAIN flightdeck.event_version AS bigint;
CREATE DOMAIN flightdeck.metadata_object AS jsonb;
CREATE DOMAIN flightdeck.site_id AS text;

ALTER TABLE flightdeck.events
    DROP CONSTRAINT events_stream_id_valid,
    DROP CONSTRAINT events_type_valid,
    DROP CONSTRAINT events_version_positive,
    DROP CONSTRAINT events_metadata_object,
    DROP CONSTRAINT events_site_valid,
    ALTER COLUMN stream_id TYPE flightdeck.stream_name,
    ALTER COLUMN type      TYPE flightdeck.event_type,
    ALTER COLUMN version   TYPE flightdeck.event_version,
    ALTER COLUMN metadata  TYPE flightdeck.metadata_object,
    ALTER COLUMN site      TYPE flightdeck.site_id;

-- The rules of migrations 0001 and 0004, word for word.
ALTER DOMAIN flightdeck.stream_name ADD CONSTRAINT stream_name_valid
    CHECK (octet_length(VALUE) BETWEEN 1 AND 255 AND VALUE !~ '[[:cntrl:]]') NOT VALID;
ALTER DOMAIN flightdeck.event_type ADD CONSTRAINT event_type_valid
    CHECK (octet_length(VALUE) BETWEEN 1 AND 255 AND VALUE !~ '[[:cntrl:]]') NOT VALID;
ALTER DOMAIN flightdeck.event_version ADD CONSTRAINT event_version_positive
    CHECK (VALUE >= 1) NOT VALID;
ALTER DOMAIN flightdeck.metadata_object ADD CONSTRAINT metadata_object_is_object
    CHECK (jsonb_typeof(VALUE) = 'object') NOT VALID;
ALTER DOMAIN flightdeck.site_id ADD CONSTRAINT site_id_valid
    CHECK (VALUE ~ '^[A-Za-z0-9_-]{1,64}$') NOT VALID;

ALTER DOMAIN flightdeck.stream_name VALIDATE CONSTRAINT stream_name_valid;
ALTER DOMAIN flightdeck.event_type VALIDATE CONSTRAINT event_type_valid;
ALTER DOMAIN flightdeck.event_version VALIDATE CONSTRAINT event_version_positive;
ALTER DOMAIN flightdeck.metadata_object VALIDATE CONSTRAINT metadata_object_is_object;
ALTER DOMAIN flightdeck.site_id VALIDATE CONSTRAINT site_id_valid;

-- Migration 0004's function, with its two RETURN QUERY results cast to the declared types
-- (`e.version` is now an event_version). Same signature, same errors, same behaviour.
CREATE OR REPLACE FUNCTION flightdeck.append_batch(
    p_stream   text,
    p_expected bigint,
    p_ids      uuid[],
    p_types    text[],
    p_data     jsonb[],
    p_metadata jsonb[],
    p_site     text DEFAULT 'default'
) RETURNS TABLE (event_id uuid, event_version bigint, event_xid xid8, event_seq bigint, event_time timestamptz, stored_before boolean)
LANGUAGE plpgsql AS $$
DECLARE
    n          int := coalesce(cardinality(p_types), 0);
    v_found    int;
    v_bad      uuid;
    v_last     bigint;
    v_last_xid xid8;
    v_site     text;
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'an append needs at least one event' USING ERRCODE = '22023';
    END IF;
    IF coalesce(cardinality(p_ids), 0) <> n OR coalesce(cardinality(p_data), 0) <> n
       OR coalesce(cardinality(p_metadata), 0) <> n THEN
        RAISE EXCEPTION 'ids, types, data and metadata must have the same length' USING ERRCODE = '22023';
    END IF;
    IF p_site IS NULL THEN
        RAISE EXCEPTION 'the site must not be null' USING ERRCODE = '22023';
    END IF;

    PERFORM pg_advisory_xact_lock(1178879025, hashtext(p_stream));

    -- Under the stream's lock nothing below changes the stream's last event.
    SELECT e.version, e.xid, e.site INTO v_last, v_last_xid, v_site
    FROM flightdeck.events e WHERE e.stream_id = p_stream
    ORDER BY e.version DESC LIMIT 1;
    v_last := coalesce(v_last, 0);

    IF v_site IS NOT NULL AND v_site <> p_site THEN
        RAISE EXCEPTION 'stream % belongs to site %, not %', left(p_stream, 80), v_site, left(p_site, 80)
            USING ERRCODE = 'FDS01', DETAIL = v_site;
    END IF;

    SELECT count(*) INTO v_found FROM flightdeck.events e WHERE e.id = ANY (p_ids);
    IF v_found > 0 THEN
        SELECT x.id INTO v_bad
        FROM unnest(p_ids, p_types, p_data, p_metadata) AS x(id, type, data, metadata)
        LEFT JOIN flightdeck.events e ON e.id = x.id
        WHERE e.id IS NULL OR e.stream_id <> p_stream OR e.site <> p_site OR e.type <> x.type
           OR e.data <> x.data OR e.metadata <> coalesce(x.metadata, '{}')
        LIMIT 1;
        IF v_found = n AND v_bad IS NULL THEN
            RETURN QUERY
                SELECT e.id, e.version::bigint, e.xid, e.seq, e.created_at, true
                FROM unnest(p_ids) WITH ORDINALITY AS x(id, ord)
                JOIN flightdeck.events e ON e.id = x.id
                ORDER BY x.ord;
            RETURN;
        END IF;
        IF v_bad IS NULL THEN
            SELECT x.id INTO v_bad FROM unnest(p_ids) AS x(id)
            JOIN flightdeck.events e ON e.id = x.id LIMIT 1;
        END IF;
        RAISE EXCEPTION 'event % is already stored with different content or as part of another append', v_bad
            USING ERRCODE = 'FDI01', DETAIL = v_bad::text;
    END IF;

    IF p_expected IS NOT NULL AND p_expected <> v_last THEN
        RAISE EXCEPTION 'stream % is at version %, not the expected %', p_stream, v_last, p_expected
            USING ERRCODE = 'FDV01', DETAIL = v_last::text;
    END IF;
    IF v_last_xid IS NOT NULL AND v_last_xid > pg_current_xact_id() THEN
        RAISE EXCEPTION 'stream % was appended to by a newer transaction; retry this transaction', p_stream
            USING ERRCODE = '40001';
    END IF;

    RETURN QUERY
        INSERT INTO flightdeck.events AS e (id, stream_id, version, type, data, metadata, site)
        SELECT coalesce(x.id, flightdeck.uuid_v7()), p_stream, v_last + x.ord, x.type, x.data,
               coalesce(x.metadata, '{}'), p_site
        FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS x(id, type, data, metadata, ord)
        ORDER BY x.ord
        RETURNING e.id, e.version::bigint, e.xid, e.seq, e.created_at, false;
END
$$;
