"""The node helper: the one program that changes anything on a storage node or a host.

Run as root (through sudo) by the front-end over SSH. One sub-command per call; every sub-command is
idempotent, takes its own lock, prints one JSON object on stdout, and fails with exit 1 and one line
on stderr that an administrator can act on (exit 2 for bad usage). Progress goes to stderr as
`INFO: ...` lines. It must import nothing the nodes do not have: stdlib, `sh`, and `rtslib_fb` on
the storage node only.
"""
