"""The lab: a storage node and two hypervisor hosts as user-mode-linux processes.

Everything tm_iscsi does happens in a kernel (LVM thin, LIO, open-iscsi, dm-cache, dm-clone) that
the development machine does not have; Debian's user-mode-linux kernel has all of it and runs as
an ordinary process. See lab/README.md.
"""
