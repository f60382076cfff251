"""TM actions of the `iscsi_lvm` driver, one module per family; `main` dispatches by action name."""
