"""What the tests, the demo and the benchmarks drive tm_iscsi with: the oned stand-in (oned.py),
one_tm / one_datastore stand-ins that run the real remotes scripts (transfer.py), the captured
oned 7.4.0 fixtures (fixtures.py), OpenNebula documents made from them (documents.py) and a small
cloud around the lab (cloud.py). Not part of the installed product."""
