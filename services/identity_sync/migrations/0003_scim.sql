-- SCIM profile attributes beyond the ones identity-sync models itself (name, title, phoneNumbers,
-- addresses, the enterprise extension …), kept as the provisioning client sent them. Never a password.
ALTER TABLE users ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}';
CREATE INDEX users_external_id ON users (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX groups_external_id ON groups (external_id) WHERE external_id IS NOT NULL;
