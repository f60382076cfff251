"""Device-mapper stacks on hypervisor hosts: dm-cache read cache, write-back cache, dm-clone."""
