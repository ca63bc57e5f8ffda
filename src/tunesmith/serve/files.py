"""/v1/files: upload training data, list, retrieve, download and delete it.

An upload is streamed to a temporary file under ``$TUNESMITH_HOME/files`` while its bytes are
counted (413 past ``--max-upload-mb``), checked with the data check (400 with the user's file name
and line numbers; nothing kept), and stored as ``files/ID.EXT``. The user's file name is kept in the
database for display only: it never becomes part of a path, so ``../../x.jsonl`` is just a name.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute

from tunesmith.core import paths
from tunesmith.serve.datacheck import check_upload, stored_path
from tunesmith.serve.job_store import JobStore, file_object
from tunesmith.serve.protocol import APIError, new_id, not_found, page, require_api_key

EXTENSIONS = (".jsonl", ".json", ".csv", ".txt")  # what the data check reads; nothing else is stored
CHUNK = 1 << 20
MULTIPART_SLACK = 64 * 1024  # room for the form's boundaries and the purpose field around the file


class _SizeLimitedRoute(APIRoute):
    """Refuses an upload without the API key, or whose declared size is already too large, before the
    form is parsed (FastAPI parses it before any dependency runs, spooling the whole body to disk).
    The exact limit is enforced while the file is copied."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def limited(request: Request):
            require_api_key(request)
            declared = request.headers.get("content-length", "")
            limit = request.app.state.settings.max_upload_bytes
            if request.method == "POST" and declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
                raise _too_large(limit)
            return await handler(request)

        return limited


router = APIRouter(route_class=_SizeLimitedRoute)


@router.post("/files")
def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> dict:
    if purpose != "fine-tune":
        raise APIError(
            400,
            f"purpose {purpose!r} is not supported here: upload training data with purpose 'fine-tune'",
            param="purpose",
        )
    return file_object(save_upload(request.app.state.store, file, request.app.state.settings.max_upload_bytes))


def save_upload(store: JobStore, file: UploadFile, limit: int, purpose: str = "fine-tune") -> sqlite3.Row:
    """Check and keep an uploaded data file (the API's upload and the page's): the stored row, or an
    APIError (400 with the data check's lines; 413 over ``limit`` bytes), keeping nothing."""
    filename = display_name(file.filename or "")
    extension = os.path.splitext(filename)[1].lower()
    if extension not in EXTENSIONS:
        raise APIError(
            400,
            f"{filename or 'the file'}: use a file name ending in {', '.join(EXTENSIONS)} "
            "(the extension decides how it is read)",
            param="file",
        )
    folder = paths.files_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=".upload-", suffix=extension, delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            size = copy_limited(file.file, handle, limit)
        problems = check_upload(temporary, filename)
        if problems:
            raise APIError(
                400,
                f"{filename}: the data check found errors; nothing was stored.\n{problems}",
                param="file",
                code="invalid_file",
            )
        file_id = new_id("file")
        os.replace(temporary, folder / f"{file_id}{extension}")
    finally:
        temporary.unlink(missing_ok=True)
    return store.add_file(file_id, filename, f"{file_id}{extension}", size, purpose)


@router.get("/files")
def list_files(
    request: Request,
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict:
    rows, more = request.app.state.store.list_files(after, limit, order == "asc", purpose)
    return page([file_object(row) for row in rows], more)


@router.get("/files/{file_id}")
def retrieve_file(request: Request, file_id: str) -> dict:
    return file_object(_file_row(request, file_id))


@router.get("/files/{file_id}/content")
def file_content(request: Request, file_id: str) -> FileResponse:
    return FileResponse(stored_path(_file_row(request, file_id)), media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(request: Request, file_id: str) -> dict:
    row = _file_row(request, file_id)
    job = request.app.state.store.delete_file(file_id)
    if job is not None:
        raise APIError(
            409,
            f"{file_id} is used by fine-tuning job {job['id']} ({job['status']}); cancel the job "
            "or wait for it to finish before deleting the file",
            param="file_id",
        )
    stored_path(row).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


def display_name(name: str) -> str:
    """The last part of whatever path the client sent, without control characters, at most 255 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", name.replace("\\", "/")).rsplit("/", 1)[-1].strip()
    return "" if name in (".", "..") else name[-255:]


def copy_limited(source, target, limit: int) -> int:
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        target.write(chunk)
    return size


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the file is larger than this server accepts ({limit:,} bytes; start the server "
        "with a larger --max-upload-mb)",
        param="file",
        code="file_too_large",
    )


def _file_row(request: Request, file_id: str):
    row = request.app.state.store.get_file(file_id)
    if row is None:
        raise not_found("file", file_id, param="file_id")
    return row
