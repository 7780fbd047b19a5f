"""Jobs: the records (``records``), their lifecycle (``manager``), and live events (``events``)."""
