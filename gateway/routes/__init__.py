"""The HTTP routes, one module per concern; each offers ``router(...) -> APIRouter``."""
