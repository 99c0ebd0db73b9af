"""Transport security and identities (issue 11): keys and certificates, pins, allow-lists,
host rules, and TLS for the daemons and mirror-init.

Standard library only: `fingerprint`, `known_hosts`, `authorized_keys`, `identity_files`,
`hosts_access`, `watched` (mirror-init imports them). `identity` needs ``cryptography``;
`tls` and `options` need Twisted and pyOpenSSL.
"""
