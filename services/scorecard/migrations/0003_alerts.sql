-- Alert rules over scorecard results, and which of their subjects (a group, a check) are firing now, so an
-- alert triggers once when its condition starts to hold rather than at every evaluation.
CREATE TABLE alert_rules (
    id          text PRIMARY KEY,
    spec        jsonb NOT NULL,
    etag        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alert_state (
    rule_id     text NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject     text NOT NULL,
    value       double precision,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, subject)
);
