-- The sites registry (issue 6): every tracker event belongs to a site, and a site's events are
-- accepted only from the origins registered for it (`flightdeck site add|list|remove`,
-- src/sites/). 0005 because 0004 is the events' `site` column; the two are independent and the
-- migration runner applies whichever is missing.

CREATE TABLE flightdeck.sites (
    -- The tracker's site id (`data-site`): 1 to 64 of A-Z a-z 0-9 _ - (src/tracker/mod.rs).
    id         text        PRIMARY KEY CONSTRAINT sites_id_format CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    -- Normalized origins (`https://example.com`, `http://localhost:3000`) or `*` for any origin.
    origins    text[]      NOT NULL CONSTRAINT sites_origins_present CHECK (cardinality(origins) > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Bumped by every statement that changes `sites`, so a server's cached directory can tell with one
-- tiny read (at most once a second) whether it must reload the table.
CREATE TABLE flightdeck.sites_generation (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    generation bigint  NOT NULL
);
INSERT INTO flightdeck.sites_generation (only_row, generation) VALUES (true, 0);

CREATE FUNCTION flightdeck.bump_sites_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE flightdeck.sites_generation SET generation = generation + 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER sites_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flightdeck.sites
    FOR EACH STATEMENT EXECUTE FUNCTION flightdeck.bump_sites_generation();
