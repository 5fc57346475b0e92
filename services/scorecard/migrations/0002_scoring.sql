-- Scorecards as written (JSON), with their etag for If-Match.
CREATE TABLE scorecards (
    id          text PRIMARY KEY,
    spec        jsonb NOT NULL,
    etag        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The catalog's entities as it serves them (stitched), kept from its events and request/reply reads.
-- `targets` are the refs its relations point at, so a change of a target finds the entities that depend on it.
CREATE TABLE entities (
    uid         uuid PRIMARY KEY,
    scope       text NOT NULL,
    ref         text NOT NULL,
    document    jsonb NOT NULL,
    targets     text[] NOT NULL DEFAULT '{}',
    owner       text,
    system      text,
    domain      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (scope, ref)
);
CREATE INDEX entities_by_target ON entities USING gin (targets);

-- Values pushed through `POST /api/scorecard/data`, by entity ref (they may arrive before the entity).
CREATE TABLE custom_data (
    scope       text NOT NULL,
    ref         text NOT NULL,
    key         text NOT NULL,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, ref, key)
);

-- Events about entities, for event-window checks: a projection of the stream.
CREATE TABLE entity_events (
    event_id    uuid PRIMARY KEY,
    scope       text NOT NULL,
    ref         text NOT NULL,
    type        text NOT NULL,
    fields      text[] NOT NULL DEFAULT '{}',
    time        timestamptz NOT NULL
);
CREATE INDEX entity_events_by_entity ON entity_events (scope, ref, time);

-- The latest result of each (scorecard, entity, check), and each change of status.
CREATE TABLE results (
    scorecard_id text NOT NULL,
    entity_uid   uuid NOT NULL,
    check_id     text NOT NULL,
    status       text NOT NULL,
    found        jsonb,
    expected     text NOT NULL,
    reason       text,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scorecard_id, entity_uid, check_id)
);
CREATE INDEX results_by_entity ON results (entity_uid);

CREATE TABLE result_history (
    scorecard_id text NOT NULL,
    entity_uid   uuid NOT NULL,
    check_id     text NOT NULL,
    previous     text,
    status       text,
    found        jsonb,
    time         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX result_history_by_entity ON result_history (entity_uid, time);

-- Score and level per (scorecard, entity), and every change of them (trends read this).
CREATE TABLE scores (
    scorecard_id text NOT NULL,
    entity_uid   uuid NOT NULL,
    score        double precision NOT NULL,
    level        text,
    passed       int NOT NULL,
    total        int NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scorecard_id, entity_uid)
);
CREATE INDEX scores_by_entity ON scores (entity_uid);

CREATE TABLE score_history (
    scorecard_id text NOT NULL,
    entity_uid   uuid NOT NULL,
    score        double precision,     -- NULL: the entity left the scorecard
    passed       int NOT NULL,
    total        int NOT NULL,
    time         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX score_history_by_scorecard ON score_history (scorecard_id, time);
CREATE INDEX score_history_by_entity ON score_history (entity_uid, time);

-- Evaluations of whole scorecards (new or edited checks, schedules), claimed by one replica at a time.
CREATE TABLE evaluation_jobs (
    id           bigserial PRIMARY KEY,
    scorecard_id text NOT NULL,
    check_ids    text[],               -- NULL: every check
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at   timestamptz
);
