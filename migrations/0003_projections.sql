-- Analytics projections (issue 5): aggregates of the tracker's events, kept up to date by the
-- projector (src/projections/) and rebuilt from the log on demand. Every counter is bucketed by
-- (site, minute) so that any time range can be summed; the minute is the event's stored
-- timestamp truncated to the minute (UTC), never the time the projector ran.
--
-- Exactly once: the projector applies a chunk of events and advances its checkpoint in ONE
-- transaction, after locking the checkpoint row and checking that it still holds the position
-- the chunk starts after. A rebuild takes the same row lock, truncates these tables and resets
-- the checkpoint in one transaction. So every event is counted once, whatever restarts, crashes,
-- concurrent servers or rebuilds happen in between.

-- Where each projection has got to in the global log: it includes every event up to `position`.
CREATE TABLE flightdeck.projection_checkpoints (
    name       text        PRIMARY KEY,
    position   text        NOT NULL CHECK (position ~ '^[0-9a-f]{32}$'),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO flightdeck.projection_checkpoints (name, position) VALUES ('stats', repeat('0', 32));

-- Events per site and minute, by type: the totals and the per-minute series.
CREATE TABLE flightdeck.stats_minutes (
    site             text        NOT NULL,
    minute           timestamptz NOT NULL,
    page_views       bigint      NOT NULL DEFAULT 0,
    interactions     bigint      NOT NULL DEFAULT 0,
    form_submissions bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (site, minute)
);

-- Page views per page.
CREATE TABLE flightdeck.stats_pages (
    site   text        NOT NULL,
    path   text        NOT NULL,
    minute timestamptz NOT NULL,
    views  bigint      NOT NULL,
    PRIMARY KEY (site, minute, path)
);

-- Interactions per tracked element (`data-fd-track` name, or a custom name).
CREATE TABLE flightdeck.stats_elements (
    site         text        NOT NULL,
    element      text        NOT NULL,
    minute       timestamptz NOT NULL,
    interactions bigint      NOT NULL,
    PRIMARY KEY (site, minute, element)
);

-- Form submissions per form (`data-fd-form` name).
CREATE TABLE flightdeck.stats_forms (
    site        text        NOT NULL,
    form        text        NOT NULL,
    minute      timestamptz NOT NULL,
    submissions bigint      NOT NULL,
    PRIMARY KEY (site, minute, form)
);

-- Which sessions were seen in which minute: unique sessions over any range, exactly.
CREATE TABLE flightdeck.stats_session_minutes (
    site    text        NOT NULL,
    minute  timestamptz NOT NULL,
    session text        NOT NULL,
    PRIMARY KEY (site, minute, session)
);

-- One row per visitor session: first and last event time (active sessions = last_seen within
-- the last 5 minutes at query time) and how many events it had.
CREATE TABLE flightdeck.stats_sessions (
    site       text        NOT NULL,
    session    text        NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    events     bigint      NOT NULL,
    PRIMARY KEY (site, session)
);
CREATE INDEX stats_sessions_last_seen ON flightdeck.stats_sessions (last_seen);

-- One row per site: the list a dashboard offers.
CREATE TABLE flightdeck.stats_sites (
    site       text        PRIMARY KEY,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    events     bigint      NOT NULL
);
