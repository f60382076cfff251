"""The demo: the lab, tm_iscsi installed on it with install.sh, and a real lifecycle through the
driver as oned drives it."""
