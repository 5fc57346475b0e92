-- Webhook deliveries of triggered alerts, written in the transaction that records the alerts, so a delivery is
-- never lost; attempts are claimed by pushing `next_attempt_at` ahead (a lease), so replicas never send one twice
-- at once and a crash mid-attempt only delays it.
CREATE TABLE alert_deliveries (
    id               uuid PRIMARY KEY,
    url              text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    last_status      integer,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX alert_deliveries_status ON alert_deliveries (status, id);
