"""OpenNebula hooks and host-boot activation for tm_iscsi."""
