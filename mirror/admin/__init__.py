"""``mirror-admin``: the administrator's command (identities now; accounts later)."""
