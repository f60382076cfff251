"""Stand-ins for the parts of OpenNebula the driver talks to, for tests.

- ``fixtures``  where the oned 7.4.0 captures are and what index.json lists
- ``oned``      an XML-RPC server answering the calls the driver makes, from registered XML
- ``transfer``  one_tm / one_datastore: run action scripts from transfer lines the way oned does

They follow the real behaviour closely enough that a driver passing against them behaves the
same under oned, and they share no code with the product (tm_iscsi), so a bug there cannot be
mirrored here.
"""
