"""Source systems: the sample world's stand-ins for the CRM API and the shop database, and connectors."""
