"""/v1/fine_tuning/jobs (being written)."""

from fastapi import APIRouter

router = APIRouter()
