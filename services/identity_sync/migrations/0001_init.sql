-- Principals owned by identity-sync: users, groups (nested through `parent_id`, at a scope) and service
-- accounts (at a scope). `version` is the ETag; every write bumps it.
CREATE TABLE users (
    id             uuid PRIMARY KEY,
    username       text NOT NULL,
    display_name   text NOT NULL DEFAULT '',
    emails         text[] NOT NULL DEFAULT '{}',
    active         boolean NOT NULL DEFAULT true,
    external_id    text,
    source         text NOT NULL DEFAULT 'api',
    version        int NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deactivated_at timestamptz,
    last_seen      timestamptz
);
-- Usernames are unique regardless of case, as SCIM requires (RFC 7643 §4.1.1, caseExact false).
CREATE UNIQUE INDEX users_username ON users (lower(username));
CREATE INDEX users_last_seen ON users (last_seen);
CREATE INDEX users_page ON users (username, id);

CREATE TABLE groups (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    display_name text NOT NULL DEFAULT '',
    scope        text NOT NULL,
    parent_id    uuid REFERENCES groups (id) ON DELETE SET NULL,
    external_id  text,
    source       text NOT NULL DEFAULT 'api',
    version      int NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX groups_name ON groups (scope, lower(name));
CREATE INDEX groups_parent ON groups (parent_id);

CREATE TABLE group_members (
    group_id uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

CREATE TABLE service_accounts (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    display_name text NOT NULL DEFAULT '',
    description  text NOT NULL DEFAULT '',
    scope        text NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    version      int NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz
);
CREATE UNIQUE INDEX service_accounts_name ON service_accounts (scope, lower(name));
