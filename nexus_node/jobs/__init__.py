"""Jobs: the records (``records``), the replicated registry of jobs and models (``registry``),
their lifecycle (``manager``) and live events (``events``)."""
