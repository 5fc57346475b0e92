-- Progress of scorecard's durable consumer of every event, for operators and readiness dashboards.
CREATE TABLE consumer_progress (
    consumer        text PRIMARY KEY,
    last_event_id   uuid NOT NULL,
    last_event_type text NOT NULL,
    last_event_time timestamptz NOT NULL,
    events_seen     bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
