"""``sensorstream``: one command for the operator of a Sensorstream pipeline.

Subcommands (each with ``--help``; every read command takes ``--json``):

- ``dlq list`` / ``dlq show`` / ``dlq replay``: what is in the dead-letter topic, why,
  and putting fixed events back (``sensorstream.cli._dlq``);
- ``lag``: per consumer group and partition, how far behind (``sensorstream.cli._lag``);
- ``topics check`` / ``topics apply``: the live topics against the declared topology
  (``sensorstream.cli._topics``);
- ``audit``: ``sensorstream-audit`` under this command;
- ``capacity``: partitions, replicas, producers and brokers for an input rate, from our
  measured costs (``sensorstream.cli._capacity``; needs no Kafka).

Connection settings (brokers, TLS, SASL, secrets files) are the services' own
``SENSORSTREAM_*`` variables, read by :func:`sensorstream.cli._connection.connection`;
``--bootstrap-servers`` on the command line overrides the variable.

Exit statuses, for every subcommand: 0 done (nothing wrong found); 1 something found that
needs an operator (drift, lag over ``--max-lag``, audit problems, a replay that stopped
with records left); 2 a bad option or setting; 3 Kafka could not be reached or refused us.
"""
