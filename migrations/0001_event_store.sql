-- The event store. Everything lives in the `flightdeck` schema so FlightDeck can share a database
-- with the application that embeds it.

-- UUID version 7 (time-ordered) for events appended through SQL without an id. PostgreSQL 15 has
-- no built-in generator: take a random v4 UUID, overwrite its first 48 bits with the Unix time in
-- milliseconds, and turn the version nibble from 4 (0100) into 7 (0111).
CREATE FUNCTION flightdeck.uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1), 'hex')::uuid
$$;

-- One row per event. The global log order is (xid, seq): the appending transaction's id, then the
-- order of insertion. Readers only read rows whose transaction is older than every transaction
-- still running, so a row ordered before something a reader has already seen can never appear
-- later (see ARCHITECTURE.md, "The ordering invariant").
CREATE TABLE flightdeck.events (
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id          uuid        NOT NULL,
    stream_id   text        NOT NULL,
    version     bigint      NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_pkey PRIMARY KEY (id),
    CONSTRAINT events_position_key UNIQUE (xid, seq),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version),
    CONSTRAINT events_stream_id_valid CHECK (octet_length(stream_id) BETWEEN 1 AND 255 AND stream_id !~ '[[:cntrl:]]'),
    CONSTRAINT events_type_valid CHECK (octet_length(type) BETWEEN 1 AND 255 AND type !~ '[[:cntrl:]]'),
    CONSTRAINT events_version_positive CHECK (version >= 1),
    CONSTRAINT events_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- Positions travel as 32 lowercase hex digits (xid then seq, 16 each): opaque to clients, and
-- their string order is the log order.
CREATE FUNCTION flightdeck.format_position(p_xid xid8, p_seq bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT lpad(to_hex(p_xid::text::bigint), 16, '0') || lpad(to_hex(p_seq), 16, '0')
$$;

-- Appends a batch of events to one stream, atomically, in the caller's transaction.
--
-- Appends to one stream are serialized by a transaction-scoped advisory lock on the stream's name,
-- so the version check below reads the committed state and concurrent appends with "any version"
-- wait instead of failing. Errors:
--   FDV01  wrong expected version (DETAIL: the stream's actual version)
--   FDI01  an event id is already stored with different content or in another batch (DETAIL: id)
--   40001  the stream's last event was appended by a transaction younger than this one: appending
--          now would put a later version before an earlier one in the log. Retry the transaction.
-- Returns each event's id, version and log position, in batch order. A batch whose ids are all
-- stored with the same content is a retry: nothing is written and the stored rows are returned.
CREATE FUNCTION flightdeck.append_batch(
    p_stream   text,
    p_expected bigint,
    p_ids      uuid[],
    p_types    text[],
    p_data     jsonb[],
    p_metadata jsonb[]
) RETURNS TABLE (event_id uuid, event_version bigint, event_xid xid8, event_seq bigint, event_time timestamptz, stored_before boolean)
LANGUAGE plpgsql AS $$
DECLARE
    n          int := coalesce(cardinality(p_types), 0);
    v_found    int;
    v_bad      uuid;
    v_last     bigint;
    v_last_xid xid8;
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'an append needs at least one event' USING ERRCODE = '22023';
    END IF;
    IF coalesce(cardinality(p_ids), 0) <> n OR coalesce(cardinality(p_data), 0) <> n
       OR coalesce(cardinality(p_metadata), 0) <> n THEN
        RAISE EXCEPTION 'ids, types, data and metadata must have the same length' USING ERRCODE = '22023';
    END IF;

    PERFORM pg_advisory_xact_lock(1178879025, hashtext(p_stream));

    SELECT count(*) INTO v_found FROM flightdeck.events e WHERE e.id = ANY (p_ids);
    IF v_found > 0 THEN
        SELECT x.id INTO v_bad
        FROM unnest(p_ids, p_types, p_data, p_metadata) AS x(id, type, data, metadata)
        LEFT JOIN flightdeck.events e ON e.id = x.id
        WHERE e.id IS NULL OR e.stream_id <> p_stream OR e.type <> x.type OR e.data <> x.data
           OR e.metadata <> coalesce(x.metadata, '{}')
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

    SELECT e.version, e.xid INTO v_last, v_last_xid
    FROM flightdeck.events e WHERE e.stream_id = p_stream
    ORDER BY e.version DESC LIMIT 1;
    v_last := coalesce(v_last, 0);

    IF p_expected IS NOT NULL AND p_expected <> v_last THEN
        RAISE EXCEPTION 'stream % is at version %, not the expected %', p_stream, v_last, p_expected
            USING ERRCODE = 'FDV01', DETAIL = v_last::text;
    END IF;
    IF v_last_xid IS NOT NULL AND v_last_xid > pg_current_xact_id() THEN
        RAISE EXCEPTION 'stream % was appended to by a newer transaction; retry this transaction', p_stream
            USING ERRCODE = '40001';
    END IF;

    RETURN QUERY
        INSERT INTO flightdeck.events AS e (id, stream_id, version, type, data, metadata)
        SELECT coalesce(x.id, flightdeck.uuid_v7()), p_stream, v_last + x.ord, x.type, x.data,
               coalesce(x.metadata, '{}')
        FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS x(id, type, data, metadata, ord)
        ORDER BY x.ord
        RETURNING e.id, e.version, e.xid, e.seq, e.created_at, false;
END
$$;

-- The SQL face of the store for applications in any language: append one event inside your own
-- transaction; it commits or rolls back with your writes. Retry on SQLSTATE 40001.
CREATE FUNCTION flightdeck.append(
    stream           text,
    type             text,
    data             jsonb,
    metadata         jsonb   DEFAULT '{}',
    id               uuid    DEFAULT NULL,
    expected_version bigint  DEFAULT NULL
) RETURNS TABLE ("position" text, version bigint, event_id uuid)
LANGUAGE sql AS $$
    SELECT flightdeck.format_position(a.event_xid, a.event_seq), a.event_version, a.event_id
    FROM flightdeck.append_batch(stream, expected_version, ARRAY[id], ARRAY[type], ARRAY[data],
                                 ARRAY[coalesce(metadata, '{}'::jsonb)]) AS a
$$;
