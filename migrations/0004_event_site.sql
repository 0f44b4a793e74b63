-- Every event belongs to a site (a tenant): the `site` column. A stream belongs to exactly one
-- site: the site of its first event. Existing rows become site `default`, as do appends by callers
-- that name no site (the old call shapes of `append_batch` and `append` keep working).
--
-- The rule is the tracker's site-id rule (1 to 64 of A-Z a-z 0-9 _ -; src/tracker/mod.rs). No
-- index: no read path selects by site (the bus filters sites in memory).
ALTER TABLE flightdeck.events
    ADD COLUMN site text NOT NULL DEFAULT 'default'
    CONSTRAINT events_site_valid CHECK (site ~ '^[A-Za-z0-9_-]{1,64}$');

-- A new parameter means a new signature: drop the old function so that old six-argument calls
-- resolve to the new one (through the parameter's default) instead of being ambiguous. The
-- plpgsql body of `flightdeck.append` calls it by name, which PostgreSQL resolves at call time.
DROP FUNCTION flightdeck.append_batch(text, bigint, uuid[], text[], jsonb[], jsonb[]);

-- Appends a batch of events to one stream of one site, atomically, in the caller's transaction.
--
-- As in migration 0001, plus the site: appends to one stream are serialized by a
-- transaction-scoped advisory lock on the stream's name, so the checks below read committed
-- state. Errors:
--   FDS01  the stream belongs to another site (DETAIL: that site); checked first, so a retry of
--          the stream's own events under another site is refused too
--   FDV01  wrong expected version (DETAIL: the stream's actual version)
--   FDI01  an event id is already stored with different content or in another batch (DETAIL: id)
--   40001  the stream's last event was appended by a transaction younger than this one: appending
--          now would put a later version before an earlier one in the log. Retry the transaction.
--   23514  the site breaks the site-id rule (the column's CHECK)
-- Returns each event's id, version and log position, in batch order. A batch whose ids are all
-- stored with the same content is a retry: nothing is written and the stored rows are returned.
CREATE FUNCTION flightdeck.append_batch(
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
                SELECT e.id, e.version, e.xid, e.seq, e.created_at, true
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
        RETURNING e.id, e.version, e.xid, e.seq, e.created_at, false;
END
$$;

-- The single-event SQL face (migration 0002) gains a `site` parameter, last and defaulted, so
-- positional and named calls written for the old signature keep working.
DROP FUNCTION flightdeck.append(text, text, jsonb, jsonb, uuid, bigint);

CREATE FUNCTION flightdeck.append(
    stream           text,
    type             text,
    data             jsonb,
    metadata         jsonb   DEFAULT '{}',
    id               uuid    DEFAULT NULL,
    expected_version bigint  DEFAULT NULL,
    site             text    DEFAULT 'default'
) RETURNS TABLE ("position" text, version bigint, event_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT a.event_xid, a.event_seq, a.event_version, a.event_id AS eid INTO r
    FROM flightdeck.append_batch(stream, expected_version, ARRAY[id], ARRAY[type], ARRAY[data],
                                 ARRAY[coalesce(metadata, '{}'::jsonb)], site) AS a;
    "position" := flightdeck.format_position(r.event_xid, r.event_seq);
    version := r.event_version;
    event_id := r.eid;
    -- Only the position travels: the event itself is read from the table.
    PERFORM pg_notify('flightdeck_events', "position");
    RETURN NEXT;
END
$$;
