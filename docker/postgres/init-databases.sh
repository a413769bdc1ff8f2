#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is created (/docker-entrypoint-initdb.d): one
# database and owner role per service — the warehouse, Airflow's metadata, MLflow's
# tracking store. Passwords come from the environment (.env), never from this file.
set -euo pipefail

: "${WAREHOUSE_PASSWORD:?}" "${AIRFLOW_DB_PASSWORD:?}" "${MLFLOW_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v warehouse_db="${WAREHOUSE_DB:-lifecycle}" \
    -v warehouse_user="${WAREHOUSE_USER:-lifecycle}" \
    -v warehouse_password="$WAREHOUSE_PASSWORD" \
    -v airflow_db="${AIRFLOW_DB:-airflow}" \
    -v airflow_user="${AIRFLOW_DB_USER:-airflow}" \
    -v airflow_password="$AIRFLOW_DB_PASSWORD" \
    -v mlflow_db="${MLFLOW_DB:-mlflow}" \
    -v mlflow_user="${MLFLOW_DB_USER:-mlflow}" \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
-- The warehouse owner creates the loader/transformer/BI roles (`lifecycle warehouse up`).
create role :"warehouse_user" login createrole password :'warehouse_password';
create database :"warehouse_db" owner :"warehouse_user";
create role :"airflow_user" login password :'airflow_password';
create database :"airflow_db" owner :"airflow_user";
create role :"mlflow_user" login password :'mlflow_password';
create database :"mlflow_db" owner :"mlflow_user";
SQL
