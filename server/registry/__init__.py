"""The consent registry: every SQL statement about identifiers, purposes and consent.

``rows`` reads and validates import files; ``imports`` applies them; ``changes`` records
consent commands and erasures; ``sources`` attributes every change to its origin;
``tables`` feeds the live matchable set; ``history`` answers who was matchable when;
``processing`` lists the records of processing an operator keeps. The schema itself,
with the one definition of matchable, is in ``psi_server.store``.
"""
