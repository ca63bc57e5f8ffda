"""/v1/models, /v1/chat/completions and /v1/completions (being written)."""

from fastapi import APIRouter

router = APIRouter()
