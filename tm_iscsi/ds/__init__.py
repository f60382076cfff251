"""DS actions of the `iscsi_lvm` image datastore; `main` dispatches by action name."""
