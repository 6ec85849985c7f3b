-- Run once by the postgres image on an empty volume (replace the passwords from your secret store).
CREATE ROLE mlflow LOGIN PASSWORD 'change-me-mlflow';
CREATE ROLE prefect LOGIN PASSWORD 'change-me-prefect';
CREATE ROLE fraudguard_lock LOGIN PASSWORD 'change-me-lock';   -- advisory locks only: owns nothing
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
CREATE DATABASE fraudguard_locks;
REVOKE CONNECT ON DATABASE mlflow, mlflow_auth, prefect FROM PUBLIC;
REVOKE ALL ON DATABASE fraudguard_locks FROM PUBLIC;
GRANT CONNECT ON DATABASE fraudguard_locks TO fraudguard_lock;
