"""Work across the cluster: the pure scheduler, the coordinator's dispatcher, and every node's
worker agent that runs assigned tasks in its runner pool."""
