"""/v1/files (being written)."""

from fastapi import APIRouter

router = APIRouter()
