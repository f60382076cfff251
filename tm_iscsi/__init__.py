"""tm_iscsi: OpenNebula TM/DS driver for LVM thin images exported over iSCSI."""
