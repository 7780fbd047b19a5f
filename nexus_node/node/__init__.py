"""The composition root: builds one node from every layer, its entry point and the embedded
node ``nexus demo`` runs. Nothing imports this package but the CLI's ``demo``."""
