"""`tm-iscsi`: the administrator's view of an iscsi_lvm cloud (status, doctor, orphans, cache
statistics, image import/export, smoke test). The OpenNebula hooks in `vmm_hooks` share its
inventory and ownership logic."""
