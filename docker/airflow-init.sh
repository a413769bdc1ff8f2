#!/usr/bin/env bash
# One-off initialisation of a docker-compose deployment (the `airflow-init` service):
# migrate Airflow's metadata DB, create the warehouse schemas and roles, and write the
# admin password of Airflow's simple auth manager from the environment. Idempotent.
set -euo pipefail

: "${AIRFLOW_ADMIN_USER:?set AIRFLOW_ADMIN_USER in .env}"
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in .env}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"

echo "airflow-init: migrating the Airflow metadata database"
airflow db migrate

echo "airflow-init: creating the warehouse schemas and roles"
lifecycle warehouse up >/dev/null

echo "airflow-init: writing the admin password file"
umask 077
python - <<'PY'
import json, os
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(path, "w") as fh:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, fh)
PY
echo "airflow-init: done"
