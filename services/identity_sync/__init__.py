"""Identity-sync: users, groups, service accounts, SCIM, LDAP and tokens.

Not built yet: health, readiness and its schema only.
"""
