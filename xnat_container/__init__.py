"""XNAT delivery: REST client, Container Service command and entrypoint (work in progress)."""

__all__: list[str] = []
