"""The Python client and the ``nexus`` command line.

``pip install nexus-node`` installs this with grpcio, protobuf and the client's few needs: it
imports :mod:`nexus_node` for the generated protobuf code and the credentials (``net``), never a
node layer (the CLI's ``demo`` imports the node lazily, with the ``node`` extra installed).
"""
