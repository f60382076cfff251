"""The front-end side of the OpenNebula protocol.

Modules, each with one job:

- ``errors``    the exceptions; every message is one line an administrator can act on
- ``tm_args``   positional argv of the TM actions oned emits -> frozen dataclasses
- ``ds_action`` DS driver actions: object id on argv, base64 driver-action XML on stdin
- ``states``    VM STATE / LCM_STATE numbers and their names
- ``objects``   read-only views over VM, Datastore and Image XML as oned writes it
- ``client``    oned access through pyone, resolving endpoint and auth like the Ruby OCA

Nothing here imports pyone unless ``client`` is imported, so argument parsing stays cheap.
"""
