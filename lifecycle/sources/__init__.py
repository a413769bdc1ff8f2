"""The sample world's source systems: a CRM REST API and the shop's orders database."""
