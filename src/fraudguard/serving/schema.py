"""Request and response models of the gateway: every field typed, ranged and named in its errors.

Ranges come from params.yaml: amounts finite, > 0 and <= validate.max_amount; times naive ISO 8601 strings
between validate.min_timestamp and now + validate.future_tolerance_hours (checked per request); ids
integers in [0, 2^63 - 1] (SQLite's and the data's int64). No extra field, no coercion (2.9 is not an id,
"12" is not an amount, true is not a number).
"""


import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

from fraudguard.config import ServeSettings, ValidateSettings

INT64_MAX = 2**63 - 1
_MAX_TIMESTAMP_CHARS = 40
_FRACTION = re.compile(r"\d:\d\d[.,](\d+)")  # the fractional seconds after hh:mm:ss

Id = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]


def parse_timestamp(value: Any, validate: ValidateSettings) -> dt.datetime:
    """A naive ISO 8601 string inside the plausible window, as a datetime; ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string such as 2024-05-01T13:45:00")
    if len(value) > _MAX_TIMESTAMP_CHARS:
        raise ValueError(f"must be at most {_MAX_TIMESTAMP_CHARS} characters")
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not an ISO 8601 date-time such as 2024-05-01T13:45:00") from None
    fraction = _FRACTION.search(value)
    if fraction and len(fraction.group(1)) > 6:
        # Python keeps microseconds and dropped the rest without a word: a payment 0.4 us inside a window's edge
        # would have been counted outside it, unlike training's (nanosecond) features.
        raise ValueError("has more than 6 digits of fractional seconds (microseconds are the finest kept)")
    if stamp.tzinfo is not None:
        raise ValueError("must have no time zone (transaction times are naive local times, as in training)")
    latest = dt.datetime.now() + dt.timedelta(hours=validate.future_tolerance_hours)
    if not validate.min_timestamp <= stamp <= latest:
        raise ValueError(f"must lie between {validate.min_timestamp.isoformat()} and now + "
                         f"{validate.future_tolerance_hours:g} h")
    return stamp


@dataclass(frozen=True)
class RequestModels:
    transaction: type[BaseModel]
    batch: type[BaseModel]
    label: type[BaseModel]
    feedback: type[BaseModel]


def request_models(validate: ValidateSettings, serve: ServeSettings) -> RequestModels:
    """The pydantic request models with the configured ranges."""
    amount = Annotated[StrictFloat, Field(gt=0, le=validate.max_amount, allow_inf_nan=False)]

    class Transaction(BaseModel):
        """One raw transaction, in the raw schema (no label)."""

        model_config = ConfigDict(extra="forbid", frozen=True)
        TRANSACTION_ID: Id
        TX_DATETIME: dt.datetime
        CUSTOMER_ID: Id
        TERMINAL_ID: Id
        TX_AMOUNT: amount

        @field_validator("TX_DATETIME", mode="before")
        @classmethod
        def _timestamp(cls, value: Any) -> dt.datetime:
            return parse_timestamp(value, validate)

    class Batch(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        transactions: list[Transaction] = Field(min_length=1, max_length=serve.max_batch_size)

    class Label(BaseModel):
        """A confirmed label of a scored transaction: TX_FRAUD true for a chargeback; known from LABEL_DATETIME."""

        model_config = ConfigDict(extra="forbid", frozen=True)
        TRANSACTION_ID: Id
        TX_FRAUD: StrictBool
        LABEL_DATETIME: dt.datetime

        @field_validator("LABEL_DATETIME", mode="before")
        @classmethod
        def _timestamp(cls, value: Any) -> dt.datetime:
            return parse_timestamp(value, validate)

    class Feedback(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        labels: list[Label] = Field(min_length=1, max_length=serve.max_batch_size)

    return RequestModels(Transaction, Batch, Label, Feedback)


def field_name(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path: ("body", "transactions", 3, "TX_AMOUNT") ->
    transactions[3].TX_AMOUNT; the body itself is `body`."""
    parts = [p for p in loc if p != "body"] if loc and loc[0] == "body" else list(loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"
