-- Appends made through SQL by other applications wake FlightDeck's listeners. The NOTIFY is sent
-- inside the appending transaction (PostgreSQL delivers it at commit, and never for a rollback).
-- Cost: a notifying transaction holds a cluster-wide lock through its commit's WAL flush, which
-- serializes such commits (pgbench here: 4.3k tps with NOTIFY vs 12.9k without). FlightDeck's own
-- append path does not use this function: it notifies after commit, coalesced.
CREATE OR REPLACE FUNCTION flightdeck.append(
    stream           text,
    type             text,
    data             jsonb,
    metadata         jsonb   DEFAULT '{}',
    id               uuid    DEFAULT NULL,
    expected_version bigint  DEFAULT NULL
) RETURNS TABLE ("position" text, version bigint, event_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT a.event_xid, a.event_seq, a.event_version, a.event_id AS eid INTO r
    FROM flightdeck.append_batch(stream, expected_version, ARRAY[id], ARRAY[type], ARRAY[data],
                                 ARRAY[coalesce(metadata, '{}'::jsonb)]) AS a;
    "position" := flightdeck.format_position(r.event_xid, r.event_seq);
    version := r.event_version;
    event_id := r.eid;
    -- Only the position travels: the event itself is read from the table.
    PERFORM pg_notify('flightdeck_events', "position");
    RETURN NEXT;
END
$$;
