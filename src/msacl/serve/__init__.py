"""``msacl serve``: a fitted run as an HTTP service (FastAPI + uvicorn, the ``serve`` extra); see ``app``."""

from msacl.serve.app import create_app

__all__ = ["create_app"]
