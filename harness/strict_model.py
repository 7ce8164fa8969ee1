"""The base of every spec section: unknown keys and bad assignments are errors, not silently kept."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
