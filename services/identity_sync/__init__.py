"""Identity-sync: users, groups and service accounts, their tokens, and the sources they are synced from."""
