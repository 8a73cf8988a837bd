"""The local web app's guard: only its own user, from its own page, may drive it (see :mod:`covseg.app`).

``Host`` must name the app's loopback address (DNS rebinding), a POST must come from the app's own
page (``Origin`` / ``Referer`` / ``Sec-Fetch-Site``), and a request body is bounded by its
``Content-Length`` before it is read. Plain functions and one ASGI middleware; fastapi is imported
only when a refusal is answered.
"""

from __future__ import annotations

from typing import Any

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def own_hosts(host: str = "127.0.0.1", port: int = 8765) -> frozenset[str]:
    """The ``Host`` header values that name this app: its loopback names (and ``host`` itself) with ``port``."""
    names = set(LOOPBACK_NAMES)
    if host not in ("", "0.0.0.0", "::"):
        names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return frozenset(f"{n.lower()}:{port}" for n in names) | (frozenset(n.lower() for n in names) if port == 80 else frozenset())


def request_refusal(method: str, headers: dict[str, str], hosts: frozenset[str]) -> str | None:
    """Why a request must not reach the app (``None``: it may).

    ``Host`` must name the app (a DNS-rebinding page sends its own name); a POST from a browser
    must come from the app's own page: ``Origin`` (or, without it, ``Referer``) must be the app's,
    and ``Sec-Fetch-Site: cross-site`` is refused. Clients that are not browsers send neither."""
    from urllib.parse import urlsplit

    host = headers.get("host", "").strip().lower()
    if host not in hosts:
        return f"refused: Host {host!r} is not this app's address (covseg app answers only {', '.join(sorted(hosts))})"
    if method.upper() in SAFE_METHODS:
        return None
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "refused: a request from another web site (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin is None and headers.get("referer"):
        parts = urlsplit(headers["referer"])
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin is not None:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme != "http" or parts.netloc not in hosts:
            return f"refused: a request from another origin ({origin[:100]!r}); use the app's own page"
    return None


class OwnPageOnly:
    """ASGI middleware: :func:`request_refusal` (403), and request bodies bounded by their Content-Length (413/411)."""

    def __init__(self, app: Any, hosts: frozenset[str], max_body: int) -> None:
        self.app, self.hosts, self.max_body = app, hosts, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from fastapi.responses import JSONResponse

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem, status = request_refusal(scope["method"], headers, self.hosts), 403
        if problem is None and scope["method"].upper() not in SAFE_METHODS:
            length = headers.get("content-length", "").strip()
            if not length.isdigit():
                problem, status = "refused: a request body without Content-Length", 411
            elif int(length) > self.max_body:
                problem, status = f"upload larger than {self.max_body // 2**20} MB", 413
        if problem is not None:
            return await JSONResponse({"error": problem}, status_code=status)(scope, receive, send)
        return await self.app(scope, receive, send)
