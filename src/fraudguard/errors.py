"""Project exceptions: each names the file, row, field or gate at fault."""


class FraudGuardError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(FraudGuardError):
    """params.yaml (or an override) is missing, unreadable, or has an unknown or ill-typed key."""


class DataError(FraudGuardError):
    """A data file cannot be read, lacks required columns, or fails a batch-level check."""


class DataVersionError(FraudGuardError):
    """DVC state is inconsistent: missing remote data, md5 mismatch, failed dvc command."""


class ModelError(FraudGuardError):
    """A model artifact is missing, malformed, or fails its integrity check."""


class RegistryError(FraudGuardError):
    """The MLflow registry is not in the state an operation needs (no version, no history...)."""


class AuditError(FraudGuardError):
    """The audit log's hash chain is broken (an entry edited, removed or reordered)."""


class SignatureError(FraudGuardError):
    """Signed evidence is missing, unreadable, or does not verify with the pipeline's public key."""


class StaticAnalysisError(FraudGuardError):
    """Bandit could not be run, could not scan, or its report could not be read."""


class PolicyError(FraudGuardError):
    """The gate policy of record (committed params.yaml) cannot be read, or the working tree differs from it."""


class StoreUnavailable(RegistryError):
    """The tracking store stayed locked or unreachable after bounded retries."""
