"""The console's Starlette application: pages, the /api/status feed and the admin actions.

Every page needs a session (else: to the login page; /api/...: 401); every action is a POST
with the session's CSRF token, is for admins only (a viewer gets 403) and is audited.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs
from gateway.errors import InstanceError, StateError
from gateway.quarantine import Quarantine
from gateway.settings import Settings
from gateway.state import Accounts
from gateway.status import status
from gateway.web.accounts import DUMMY_HASH, verify_password
from gateway.web.auth import LoginThrottle, Session, Sessions, throttle_keys
from gateway.web.data import Throughput, list_rows, reasons

log = logs.get_logger("web")

HERE = Path(__file__).parent
COOKIE = "gw_session"
ADD_ACCOUNT_HINT = "dicom-gateway user add NAME --role admin"
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
     b"object-src 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
NOTICES = {
    "released": "Released: the instance is back in the spool (or its folder).",
    "requeued": "Requeued: the dead letter goes to its destination again.",
    "purged": "Purged for good.",
    "gone": "That entry is no longer there.",
}


class NotLoggedIn(Exception):
    pass


class Forbidden(Exception):
    pass


class SecurityHeaders:
    """Adds the security headers to every response, errors and static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in SECURITY_HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Console:
    """The console's state: settings, accounts, sessions, the login throttle and the chart."""

    settings: Settings
    accounts: Accounts
    sessions: Sessions = field(default_factory=Sessions)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    throughput: Throughput = field(default_factory=Throughput)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @property
    def quarantine(self) -> Quarantine:
        return Quarantine(self.settings.quarantine_dir)

    def report(self) -> dict[str, Any]:
        """``status --json``'s report, plus the chart's series."""
        report = status(self.settings)
        cluster = report["cluster"]
        if cluster.get("database") == "reachable":
            self.throughput.record(int(cluster["received"]), int(cluster["forwarded"]))
        return {**report, "throughput": self.throughput.series()}

    def audit(self, action: str, detail: str, account: str) -> None:
        try:
            self.accounts.audit(action, detail, account)
        except StateError as exc:
            log.error("audit row not written", action=action, error=type(exc).__name__)


def create_app(console: Console) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def page(request: Request, name: str, context: Mapping[str, Any], status_code: int = 200,
             headers: Mapping[str, str] | None = None) -> Response:
        session: Session | None = request.scope.get("console_session")
        return templates.TemplateResponse(request, name, {"session": session, **context},
                                          status_code=status_code, headers=headers)

    def signed_in(request: Request) -> Session:
        session = console.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise NotLoggedIn
        account = console.accounts.get(session.account)  # removed or changed: out at once
        if account is None or account.role != session.role:
            console.sessions.close(session.token)
            raise NotLoggedIn
        request.scope["console_session"] = session
        return session

    async def admin_action(request: Request, action: str) -> tuple[Session, Any]:
        """The session of an admin who sent a valid CSRF token, and the form."""
        session = signed_in(request)
        form = await request.form()
        token = form.get("csrf")
        if not isinstance(token, str) or not session.csrf_matches(token):
            await run_in_threadpool(console.audit, "web csrf refused", action, session.account)
            raise Forbidden
        if not session.is_admin:
            await run_in_threadpool(console.audit, "web denied", action, session.account)
            raise Forbidden
        return session, form

    # --- login and logout -----------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        if console.sessions.get(request.cookies.get(COOKIE)) is not None:
            return RedirectResponse("/", 303)
        return await login_page(request)

    async def login_page(request: Request, error: str = "", status_code: int = 200,
                         headers: Mapping[str, str] | None = None) -> Response:
        no_accounts = not await run_in_threadpool(console.accounts.list)
        return page(request, "login.html", {"error": error, "no_accounts": no_accounts,
                                            "hint": ADD_ACCOUNT_HINT},
                    status_code, headers)

    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("username", "")).strip()[:64], str(form.get("password", ""))
        client = request.client.host if request.client else "?"
        keys = throttle_keys(name, client)
        if not await run_in_threadpool(console.accounts.list):
            return await login_page(request, "No account exists yet.", 403)
        wait = console.throttle.locked_for(keys)
        if wait > 0:
            await run_in_threadpool(console.audit, "web login locked", "", name or "-")
            minutes = math.ceil(wait / 60)
            return await login_page(
                request, f"Too many failed logins: try again in {minutes} minute(s).", 429,
                {"Retry-After": str(math.ceil(wait))})
        await console.sleep(console.throttle.delay(keys))
        account = await run_in_threadpool(console.accounts.get, name)
        matches = await run_in_threadpool(
            verify_password, password, account.password_hash if account else DUMMY_HASH)
        if account is None or not matches:
            console.throttle.failed(keys)
            await run_in_threadpool(console.audit, "web login failed", "", name or "-")
            return await login_page(request, "Wrong name or password.", 401)
        console.throttle.succeeded(keys)
        session = console.sessions.open(account.name, account.role)
        await run_in_threadpool(console.audit, "web login", f"role={account.role}", account.name)
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    async def logout(request: Request) -> Response:
        session = signed_in(request)
        form = await request.form()
        token = form.get("csrf")
        if not isinstance(token, str) or not session.csrf_matches(token):
            raise Forbidden
        console.sessions.close(session.token)
        await run_in_threadpool(console.audit, "web logout", "", session.account)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # --- pages ----------------------------------------------------------------------------

    async def dashboard(request: Request) -> Response:
        signed_in(request)
        report = await run_in_threadpool(console.report)
        return page(request, "dashboard.html", {"report": report})

    async def api_status(request: Request) -> Response:
        signed_in(request)
        return JSONResponse(await run_in_threadpool(console.report))

    async def quarantine_page(request: Request) -> Response:
        return await list_page(request, dead_letters=False)

    async def dead_letters_page(request: Request) -> Response:
        return await list_page(request, dead_letters=True)

    async def list_page(request: Request, dead_letters: bool) -> Response:
        signed_in(request)
        reason = request.query_params.get("reason", "")
        rows = await run_in_threadpool(list_rows, console.quarantine, dead_letters, reason)
        known = await run_in_threadpool(reasons, console.quarantine, dead_letters)
        notice = NOTICES.get(request.query_params.get("notice", ""), "")
        return page(request, "dead_letters.html" if dead_letters else "quarantine.html",
                    {"rows": rows, "reasons": known, "reason": reason, "notice": notice})

    # --- actions --------------------------------------------------------------------------

    async def release(request: Request) -> Response:
        return await act(request, "release", dead_letter=False)

    async def requeue(request: Request) -> Response:
        return await act(request, "requeue", dead_letter=True)

    async def purge(request: Request) -> Response:
        return await act(request, "purge", dead_letter=request.url.path.startswith("/dead"))

    async def act(request: Request, action: str, dead_letter: bool) -> Response:
        session, _ = await admin_action(request, action)
        record_id = request.path_params["record_id"]
        back = "/dead-letters" if dead_letter else "/quarantine"
        try:
            record = console.quarantine.get(record_id)
        except KeyError:
            return RedirectResponse(f"{back}?notice=gone", 303)
        if bool(record.context.get("dead_letter")) != dead_letter:
            return RedirectResponse(f"{back}?notice=gone", 303)
        detail = f"{record.id} reason={record.reason}"
        if action == "purge":
            await run_in_threadpool(console.quarantine.remove, record.id)
            await run_in_threadpool(console.audit, "web purge", detail, session.account)
            return RedirectResponse(f"{back}?notice=purged", 303)
        try:
            await run_in_threadpool(release_record, console.settings, record.id)
        except InstanceError as exc:
            await run_in_threadpool(console.audit, f"web {action} failed",
                                    f"{detail} still={exc.reason}", session.account)
            return page(request, "message.html",
                        {"title": "Still failing",
                         "text": f"The entry still fails: {exc.reason}. It stays where it was.",
                         "back": back}, 409)
        await run_in_threadpool(console.audit, f"web {action}", detail, session.account)
        return RedirectResponse(f"{back}?notice={'requeued' if dead_letter else 'released'}",
                                303)

    # --- the pseudonym map (admins only) ---------------------------------------------------

    async def map_form(request: Request) -> Response:
        session = signed_in(request)
        if not session.is_admin:
            raise Forbidden
        return page(request, "map.html", {"term": "", "entries": None})

    async def map_lookup(request: Request) -> Response:
        session, form = await admin_action(request, "map lookup")
        term = str(form.get("term", "")).strip()[:256]
        entries = await run_in_threadpool(lookup, console.settings, term, session.account) \
            if term else []
        return page(request, "map.html", {"term": term, "entries": entries})

    # --- errors ---------------------------------------------------------------------------

    async def not_logged_in(request: Request, _exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "not logged in"}, 401)
        return RedirectResponse("/login", 303)

    async def forbidden(request: Request, _exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "forbidden"}, 403)
        return page(request, "message.html",
                    {"title": "Not allowed", "text": "Your account may not do this.",
                     "back": "/"}, 403)

    async def state_error(request: Request, exc: Exception) -> Response:
        log.error("console request failed", path=request.url.path, error=type(exc).__name__)
        return page(request, "message.html",
                    {"title": "Database problem", "text": str(exc), "back": "/"}, 503)

    routes = [
        Route("/", dashboard),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/status", api_status),
        Route("/quarantine", quarantine_page),
        Route("/quarantine/{record_id}/release", release, methods=["POST"]),
        Route("/quarantine/{record_id}/purge", purge, methods=["POST"]),
        Route("/dead-letters", dead_letters_page),
        Route("/dead-letters/{record_id}/requeue", requeue, methods=["POST"]),
        Route("/dead-letters/{record_id}/purge", purge, methods=["POST"]),
        Route("/map", map_form, methods=["GET"]),
        Route("/map", map_lookup, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={
        NotLoggedIn: not_logged_in, Forbidden: forbidden, StateError: state_error})
    app.add_middleware(SecurityHeaders)
    return app


def release_record(settings: Settings, record_id: str) -> str:
    """What ``quarantine release`` does for one entry (gateway.release)."""
    from gateway.release import Releaser
    from gateway.state import Deliveries, PseudonymStore

    quarantine = Quarantine(settings.quarantine_dir)
    store = PseudonymStore(settings.database_url)
    deliveries = Deliveries(settings.database_url)
    try:
        return Releaser(settings, quarantine, store, deliveries).release(quarantine.get(record_id))
    finally:
        store.close()
        deliveries.close()


def lookup(settings: Settings, term: str, account: str) -> list[Any]:
    """``map lookup`` (audited by the store, with the console account's name)."""
    from gateway.state import PseudonymStore

    store = PseudonymStore(settings.database_url)
    try:
        return store.lookup(term, account=account)
    finally:
        store.close()
