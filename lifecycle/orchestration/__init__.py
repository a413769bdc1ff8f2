"""Orchestration: the Airflow side of Lifecycle.

- :mod:`~lifecycle.orchestration.config` — the local Airflow home under ``LIFECYCLE_HOME``
  and the settings the DAGs need (alert webhook);
- :mod:`~lifecycle.orchestration.home` — set up and migrate that home, idempotently;
- :mod:`~lifecycle.orchestration.daily` — the tasks of ``lifecycle_daily`` (thin calls into
  ``lifecycle.extract`` / ``lifecycle.transform``) and the assets they emit;
- :mod:`~lifecycle.orchestration.connections` — credentials from Airflow Connections under
  Airflow (warehouse, push token), the ``LIFECYCLE_*`` variables as the fallback;
- :mod:`~lifecycle.orchestration.assets` — asset URIs that name the warehouse
  (``postgres://host:port/db/schema/table``, or ``x-lifecycle://`` for the embedded one);
- :mod:`~lifecycle.orchestration.alerts` — the on-failure callback (log + webhook);
- :mod:`~lifecycle.orchestration.runner` — run a DAG in-process with ``dag.test()`` for one
  logical date or a range, with per-task reports;
- :mod:`~lifecycle.orchestration.logs` — the runner's log file per run (``dag.test()``
  prints task logs instead of writing Airflow's per-task files);
- :mod:`~lifecycle.orchestration.cli` — ``lifecycle pipeline ...`` and ``lifecycle airflow ...``.

Importing this package (or ``config``/``home``/``cli``) does not import Airflow: Airflow
reads ``AIRFLOW_HOME`` once, at its first import, so :func:`home.activate` must run first.
"""
