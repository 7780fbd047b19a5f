"""Content-addressed files (sha256): the store on disk, replication to ``--replicas`` holders,
and the bounded cache of blobs a node keeps only because it used them."""
