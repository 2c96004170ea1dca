#!/usr/bin/env bash
# Runs once, when the PostgreSQL data volume is first initialised (docker-entrypoint-initdb.d):
# one database and one owner role for MLflow, the same for Airflow, so neither service can
# read or drop the other's tables. Names and passwords come from .env through the postgres
# service's environment; psql variables (:"name" for identifiers, :'value' for literals) quote
# them, so no value is pasted into SQL text.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v mlflow_db="$MLFLOW_DB_NAME" -v mlflow_user="$MLFLOW_DB_USER" \
  -v mlflow_password="$MLFLOW_DB_PASSWORD" \
  -v airflow_db="$AIRFLOW_DB_NAME" -v airflow_user="$AIRFLOW_DB_USER" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;

CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_password';
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
SQL
