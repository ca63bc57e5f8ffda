"""/v1/fine_tuning/jobs: create, list, retrieve, cancel; a job's events and checkpoints.

Creating a job is cheap and happens here: the request is checked (files exist, the model can be
fine-tuned, suffix and hyperparameters are valid), the job is stored as ``validating_files``, its
files are checked together with the data check, and it becomes ``queued`` (or ``failed``, saying
why). Training happens in the worker process (serve.worker), never in this one.

Hyperparameters are accepted where OpenAI's API takes them: at the top level (deprecated there) and
under ``method.supervised.hyperparameters``, or ``method.dpo.hyperparameters`` for a DPO job
(``method: {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}``, training_file in OpenAI's
preference format or tunesmith's; the job trains with ``--method dpo``). Besides OpenAI's three (n_epochs, batch_size,
learning_rate_multiplier), any training setting is a hyperparameter by its TrainConfig name (lora_rank,
max_length, ...), checked by TrainConfig here and stored with the job for the runner (job_runner.job_config).
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunesmith.core.config import TrainConfig, check_name
from tunesmith.core.errors import TunesmithError
from tunesmith.models.base import EMBEDDED, resolve_base
from tunesmith.registry import store as registry
from tunesmith.serve.datacheck import validate_job
from tunesmith.serve.job_store import (
    HYPERPARAMETERS,
    UNFINISHED,
    JobStore,
    checkpoint_object,
    event_object,
    job_object,
)
from tunesmith.serve.protocol import APIError, new_id, not_found, page

MAX_SUFFIX = 40
METHODS = ("supervised", "dpo")  # OpenAI's method.type values served here
# name -> (integers only, lowest, highest, lowest allowed itself)
LIMITS = {
    "n_epochs": (True, 1, 100, True),
    "batch_size": (True, 1, 256, True),
    "learning_rate_multiplier": (False, 0, 100, False),
}
# TrainConfig fields a job sets from its own request fields, never from hyperparameters
JOB_FIELDS = {"data": "training_file", "val_data": "validation_file", "base": "model", "name": "suffix", "seed": "seed"}
OPENAI_NAMES = {field: name for name, field in HYPERPARAMETERS.items()}  # epochs -> n_epochs, ...
SETTINGS = [name for name in TrainConfig.model_fields if name not in JOB_FIELDS and name not in OPENAI_NAMES]

router = APIRouter()


class Hyperparameters(BaseModel):
    # Any other key is a training setting by its TrainConfig name, checked in _hyperparameters.
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"description": f"Also any training setting by name: {', '.join(SETTINGS)}."},
    )

    n_epochs: Any = Field("auto", description='Passes over the training data, or "auto" (from the data size).')
    batch_size: Any = Field(
        "auto", description='Examples per optimizer step, or "auto" (8, fewer for small data: training.defaults).'
    )
    learning_rate_multiplier: Any = Field("auto", description='Scales the automatic learning rate, or "auto" (1).')


class Supervised(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")  # reinforcement settings: refused by type below

    type: str = "supervised"
    supervised: Supervised | None = None
    dpo: Supervised | None = None  # the same shape; beta is a training setting by name


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Model to fine-tune: a base model (see `tunesmith base list`) or a "
        "fine-tuned model of this server (NAME:VERSION), to build on."
    )
    training_file: str = Field(description="Id of an uploaded file with purpose fine-tune.")
    validation_file: str | None = Field(None, description="Id of an uploaded file; else a split is held out.")
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, description="Up to 40 characters in the fine-tuned model's name.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seeds the run; random when not given.")
    metadata: dict[str, str] | None = None
    integrations: list | None = None


@router.post("/fine_tuning/jobs")
def create_job(request: Request, body: JobRequest) -> dict:
    return job_object(submit_job(request.app.state.store, body))


def submit_job(store: JobStore, body: JobRequest) -> sqlite3.Row:
    """Check a job request, store it and check its files (the API's jobs and the page's): the job's row,
    queued or failed with the data check's lines; an APIError for a request that cannot become a job."""
    hyperparameters = _hyperparameters(body)
    _check_model(body.model)
    if body.suffix is not None:
        _check_suffix(body.suffix)
    if body.integrations:
        raise APIError(400, "integrations are not supported by this server", param="integrations")
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id is not None and store.get_file(file_id) is None:
            raise not_found("file", file_id, param=param)
    job_id = new_id("ftjob")
    tag = job_id.split("-", 1)[1][:8]
    # NAME:VERSION of a registry model -> NAME (a registry name has no ":"), cut to leave room for the tag.
    registry_name = f"{body.suffix}-{tag}" if body.suffix else f"{body.model.split(':')[0][:48]}-ft-{tag}"
    seed = body.seed if body.seed is not None else random.randrange(2**31)
    store.create_job(
        job_id,
        body.model,
        body.training_file,
        body.validation_file,
        body.suffix,
        seed,
        hyperparameters,
        registry_name,
        body.metadata,
    )
    store.add_event(job_id, f"Created fine-tuning job: {job_id}", data={"model": body.model})
    validate_job(store, job_id)
    return store.job(job_id)


@router.get("/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> dict:
    rows, more = request.app.state.store.list_jobs(after, limit)
    return page([job_object(row) for row in rows], more)


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(request: Request, job_id: str) -> dict:
    return job_object(_job_row(request, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str) -> dict:
    """The status changes here and now; the worker sees it within a second and stops the training process."""
    job = _job_row(request, job_id)
    return job_object(cancel(request.app.state.store, job["id"]))


def cancel(store: JobStore, job_id: str) -> sqlite3.Row:
    """Cancel an unfinished job (the API's and the page's); 409 for a job that has finished."""
    if not store.transition(job_id, "cancelled", UNFINISHED, "Fine-tuning job cancelled"):
        job = store.job(job_id)
        raise APIError(
            409,
            f"Job {job_id} is {job['status']}: only a job that is {', '.join(UNFINISHED)} can be cancelled",
            param="fine_tuning_job_id",
        )
    return store.job(job_id)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(request: Request, job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000)) -> dict:
    _job_row(request, job_id)
    rows, more = request.app.state.store.list_events(job_id, after, limit)
    return page([event_object(row).to_json() for row in rows], more)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    request: Request, job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100)
) -> dict:
    _job_row(request, job_id)
    rows, more = request.app.state.store.list_checkpoints(job_id, after, limit)
    return page([checkpoint_object(row) for row in rows], more)


def _job_row(request: Request, job_id: str):
    row = request.app.state.store.get_job(job_id)
    if row is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return row


def _hyperparameters(body: JobRequest) -> dict:
    """The requested values, "auto" where not given, from either place the API accepts them; training
    settings by their TrainConfig name, checked by TrainConfig."""
    kind = body.method.type if body.method is not None else "supervised"
    if kind not in METHODS:
        raise APIError(
            400,
            f"method {kind!r} is not supported: this server fine-tunes with {' or '.join(map(repr, METHODS))}",
            param="method.type",
        )
    places = {"hyperparameters": body.hyperparameters}
    inner = getattr(body.method, kind, None) if body.method is not None else None
    if inner is not None:
        places[f"method.{kind}.hyperparameters"] = inner.hyperparameters
    result: dict[str, Any] = {name: "auto" for name in LIMITS}
    if kind == "dpo":
        result["method"] = "dpo"
    params: dict[str, str] = {}  # where each value was given, for an error
    for place, given in places.items():
        for name, value in (given.model_dump() if given else {}).items():
            if value is None or value == "auto":
                continue
            param = f"{place}.{name}"
            value = _check_value(param, value, *LIMITS[name]) if name in LIMITS else _check_setting(param, name, value)
            if result.get(name, "auto") != "auto" and result[name] != value:
                raise APIError(
                    400,
                    f"{name} is given twice with different values ({result[name]} and {value}); "
                    f"give it once, under method.{kind}.hyperparameters",
                    param=param,
                )
            result[name], params[name] = value, param
    return _checked_settings(result, params)


def _check_setting(param: str, name: str, value: Any) -> Any:
    """A training setting's name is a TrainConfig field that the job does not set otherwise."""
    if name in JOB_FIELDS:
        raise APIError(400, f"{name} is not a hyperparameter: the job's {JOB_FIELDS[name]} sets it", param=param)
    if name in OPENAI_NAMES:
        raise APIError(400, f"{name}: give it as {OPENAI_NAMES[name]}", param=param)
    if name not in TrainConfig.model_fields:
        raise APIError(
            400,
            f"unknown hyperparameter {name!r}: give {', '.join(LIMITS)} or a training setting: {', '.join(SETTINGS)}",
            param=param,
        )
    return value


def _checked_settings(result: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """``result`` validated by TrainConfig, the settings as it reads them (``"16"`` -> 16); a bad value is a
    400 naming where it was given (a rule between settings: the hyperparameters object)."""
    place = next(reversed(params.values()), "hyperparameters").rsplit(".", 1)[0]
    settings = {HYPERPARAMETERS.get(name, name): value for name, value in result.items() if value != "auto"}
    try:
        config = TrainConfig(data=Path("training_file"), **settings)
    except ValidationError as error:
        problem = error.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else None
        name = OPENAI_NAMES.get(field, field) if field else None
        message = problem["msg"].removeprefix("Value error, ")
        param = params.get(name, place) if name else place
        raise APIError(400, f"{param}: {message}", param=param) from None
    read = config.model_dump(mode="json")
    return {name: value if name in LIMITS else read[name] for name, value in result.items()}


def _check_value(param: str, value: Any, integer: bool, low: float, high: float, low_allowed: bool) -> int | float:
    kind = "an integer" if integer else "a number"
    number_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number_ok and integer and isinstance(value, float):
        number_ok = value.is_integer()
    in_range = number_ok and (low <= value if low_allowed else low < value) and value <= high
    if not in_range:
        bound = f"from {low}" if low_allowed else f"above {low}"
        raise APIError(400, f'{param} must be "auto" or {kind} {bound} to {high}, not {value!r}', param=param)
    return int(value) if integer else float(value)


def _check_model(model: str) -> None:
    if model in EMBEDDED:
        try:
            resolve_base(model, convert=False)  # raises, with the install command, when not installed
        except TunesmithError as problem:
            raise APIError(400, str(problem), param="model") from None
        return
    try:
        registry.get(model)
        return  # a registry fine-tune: the job builds on it, and the new version records the lineage
    except TunesmithError:
        pass
    raise APIError(
        404,
        f"The model {model!r} does not exist or cannot be fine-tuned here; give a fine-tuned model "
        "from GET /v1/models or a base model: "
        f"{', '.join(EMBEDDED)}",
        param="model",
        code="model_not_found",
    )


def _check_suffix(suffix: str) -> None:
    try:
        check_name(suffix)
    except ValueError as problem:
        raise APIError(400, f"suffix: {problem}", param="suffix") from None
    if len(suffix) > MAX_SUFFIX:
        raise APIError(400, f"suffix: at most {MAX_SUFFIX} characters, not {len(suffix)}", param="suffix")
