"""The web console without a browser (Starlette's TestClient): accounts and login, the login
throttle, sessions, CSRF, roles, security headers, and what the pages show."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.cli import main
from gateway.errors import ConfigError, MalformedInstance
from gateway.quarantine import Quarantine
from gateway.settings import Settings, parse_settings
from gateway.state import Accounts, PseudonymStore
from gateway.status import status
from gateway.web import auth
from gateway.web.accounts import hash_password, verify_password
from gateway.web.app import Console, create_app

ADMIN_PASSWORD = "correct horse battery"
VIEWER_PASSWORD = "viewer password 1"
PATIENT_NAME = "Secret^Patient"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "secret.key").write_text("00" * 32 + "\n")
    return parse_settings({
        "gateway": {"data_dir": str(tmp_path / "var"), "secret_file": str(tmp_path / "secret.key")},
        "destinations": [{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                          "port": 11999}],
        "web": {"address": "127.0.0.1:8080"},
    })


class Delays:
    """Stands in for asyncio.sleep: records the delays asked for, waits for none."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    settings.prepare_data_dir()
    accounts = Accounts(settings.database_url)
    yield Console(settings, accounts, sleep=Delays())
    accounts.close()


def add_accounts(console: Console) -> None:
    console.accounts.add("alice", "admin", hash_password(ADMIN_PASSWORD))
    console.accounts.add("victor", "viewer", hash_password(VIEWER_PASSWORD))


@pytest.fixture
def client(console: Console) -> TestClient:
    return TestClient(create_app(console), base_url="http://127.0.0.1:8080",
                      follow_redirects=False)


def log_in(client: TestClient, name: str, password: str) -> str:
    """Logs in; the session's CSRF token (read off the page, as a browser would)."""
    response = client.post("/login", data={"username": name, "password": password})
    assert response.status_code == 303, response.text
    page = client.get("/")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


def quarantine_one(settings: Settings, dead_letter: bool = False,
                   source: str = "MODALITY@127.0.0.1:4000") -> str:
    """A quarantined instance with a known patient name (the tests check it is never shown)."""
    from pydicom import examples

    ds = examples.ct
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "MRN-SECRET-7"
    path = settings.data_dir / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    context = {"dead_letter": True, "destination": "archive"} if dead_letter else \
        {"received_by": "serve"}
    record = Quarantine(settings.quarantine_dir).put(
        path.read_bytes(), "dead-letter" if dead_letter else source,
        MalformedInstance("missing (0008,0018) SOPInstanceUID"), context)
    return record.id


# --- passwords ------------------------------------------------------------------------------


def test_passwords_are_salted_scrypt_hashes_with_their_parameters() -> None:
    first, second = hash_password(ADMIN_PASSWORD), hash_password(ADMIN_PASSWORD)
    assert first != second  # salted
    assert first.startswith("scrypt$16384$8$1$")
    assert ADMIN_PASSWORD not in first
    assert verify_password(ADMIN_PASSWORD, first)
    assert not verify_password("wrong password", first)
    assert not verify_password(ADMIN_PASSWORD, "not a hash")


# --- login, sessions ------------------------------------------------------------------------


def test_without_accounts_logins_are_refused_and_the_page_names_the_command(
        client: TestClient) -> None:
    page = client.get("/login")
    assert "dicom-gateway user add NAME --role admin" in page.text
    response = client.post("/login", data={"username": "alice", "password": ADMIN_PASSWORD})
    assert response.status_code == 403
    assert "dicom-gateway user add" in response.text


def test_pages_redirect_to_login_and_the_api_answers_401(client: TestClient,
                                                         console: Console) -> None:
    add_accounts(console)
    for path in ("/", "/quarantine", "/dead-letters", "/map"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/login", path
    assert client.get("/api/status").status_code == 401
    assert client.post("/quarantine/x/purge", data={"csrf": "x"}).status_code == 303


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_the_session(
        client: TestClient, console: Console) -> None:
    add_accounts(console)
    response = client.post("/login", data={"username": "alice", "password": ADMIN_PASSWORD})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "gw_session=" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS it is Secure
    csrf = log_in(client, "alice", ADMIN_PASSWORD)
    token = client.cookies["gw_session"]
    assert client.get("/api/status").status_code == 200
    assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    client.cookies.set("gw_session", token)
    assert client.get("/api/status").status_code == 401
    actions = [(action, account) for _, action, _, account in
               PseudonymStore(console.settings.database_url).audit_entries()]
    assert ("web login", "alice") in actions and ("web logout", "alice") in actions


def test_the_cookie_is_secure_over_https(console: Console) -> None:
    add_accounts(console)
    client = TestClient(create_app(console), base_url="https://127.0.0.1:8080",
                        follow_redirects=False)
    response = client.post("/login", data={"username": "alice", "password": ADMIN_PASSWORD})
    assert "Secure" in response.headers["set-cookie"]


def test_a_removed_account_is_logged_out_at_once(client: TestClient, console: Console) -> None:
    add_accounts(console)
    log_in(client, "victor", VIEWER_PASSWORD)
    console.accounts.remove("victor")
    assert client.get("/api/status").status_code == 401


def test_failed_logins_are_slowed_then_locked_with_429(client: TestClient,
                                                       console: Console) -> None:
    add_accounts(console)
    delays = console.sleep
    assert isinstance(delays, Delays)
    for _ in range(auth.LOCK_AFTER):
        response = client.post("/login", data={"username": "alice", "password": "wrong one!"})
        assert response.status_code == 401
        assert "Wrong name or password." in response.text
    assert delays.asked[: auth.FREE_FAILURES] == [0.0] * auth.FREE_FAILURES
    assert all(d > 0 for d in delays.asked[auth.FREE_FAILURES:])
    assert delays.asked == sorted(delays.asked)  # each failure waits longer
    # locked: even the right password is refused for a while
    response = client.post("/login", data={"username": "alice", "password": ADMIN_PASSWORD})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    actions = [a for _, a, _, _ in PseudonymStore(console.settings.database_url).audit_entries()]
    assert actions.count("web login failed") == auth.LOCK_AFTER
    assert "web login locked" in actions


def test_the_lock_ends_after_its_time() -> None:
    now = [1000.0]
    throttle = auth.LoginThrottle(clock=lambda: now[0])
    keys = auth.throttle_keys("alice", "10.0.0.1")
    for _ in range(auth.LOCK_AFTER):
        throttle.failed(keys)
    assert throttle.locked_for(keys) == auth.LOCK_SECONDS
    now[0] += auth.LOCK_SECONDS + 1
    assert throttle.locked_for(keys) <= 0
    assert throttle.delay(keys) == 0


def test_sessions_expire_when_idle() -> None:
    now = [0.0]
    sessions = auth.Sessions(clock=lambda: now[0])
    session = sessions.open("alice", "admin")
    now[0] += auth.IDLE_SECONDS - 1
    assert sessions.get(session.token) is session
    now[0] += auth.IDLE_SECONDS + 1
    assert sessions.get(session.token) is None


# --- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/login", "/static/console.js", "/api/status", "/nowhere"])
def test_every_response_carries_the_security_headers(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_pages_have_no_inline_script(client: TestClient, console: Console) -> None:
    add_accounts(console)
    log_in(client, "alice", ADMIN_PASSWORD)
    for path in ("/login", "/", "/quarantine", "/dead-letters", "/map"):
        html = client.get(path).text
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.DOTALL)
        assert all(re.fullmatch(r' src="/static/[a-z]+\.js"', attributes) and not body
                   for attributes, body in scripts), (path, scripts)
        assert len(scripts) == html.count("<script")  # none left unclosed or unmatched
        assert " on" + "click=" not in html and "javascript:" not in html


# --- the dashboard ---------------------------------------------------------------------------


def test_api_status_is_the_status_report_with_the_chart(client: TestClient,
                                                        console: Console) -> None:
    add_accounts(console)
    log_in(client, "victor", VIEWER_PASSWORD)
    report = client.get("/api/status").json()
    expected = status(console.settings)
    assert report["cluster"] == expected["cluster"]
    assert report["node"]["quarantine"] == expected["node"]["quarantine"]
    assert report["node"]["pending"] == expected["node"]["pending"]
    assert set(report["throughput"]) == {"minutes", "received", "delivered"}


def test_throughput_is_the_difference_between_minutes() -> None:
    from gateway.web.data import Throughput

    chart = Throughput()
    chart.record(10, 5, now=60 * 100 + 5)
    chart.record(12, 6, now=60 * 100 + 50)  # the minute's last sample counts
    chart.record(20, 16, now=60 * 101 + 10)
    chart.record(21, 16, now=60 * 102 + 10)
    assert chart.series() == {"minutes": ["01:41", "01:42"], "received": [8, 1],
                              "delivered": [10, 0]}


# --- quarantine, dead letters: roles and CSRF -------------------------------------------------


def test_a_viewer_sees_lists_without_patient_data_and_no_buttons(
        client: TestClient, console: Console) -> None:
    add_accounts(console)
    quarantine_one(console.settings)
    quarantine_one(console.settings, dead_letter=True)
    log_in(client, "victor", VIEWER_PASSWORD)
    for path in ("/", "/quarantine", "/dead-letters", "/api/status"):
        text = client.get(path).text
        assert "Secret" not in text and "MRN-SECRET" not in text, path
    listing = client.get("/quarantine").text
    assert "MODALITY" in listing and "CT Image Storage" in listing and "malformed" in listing
    assert "<button type=\"submit\">Release" not in listing and "/purge" not in listing
    assert "archive" in client.get("/dead-letters").text
    assert client.get("/map").status_code == 403


def test_what_a_sender_chose_is_shown_as_text_never_as_markup(
        client: TestClient, console: Console) -> None:
    add_accounts(console)
    quarantine_one(console.settings, source="<b>X</b>\"'@127.0.0.1:4000")  # a 16-byte AE title
    log_in(client, "victor", VIEWER_PASSWORD)
    listing = client.get("/quarantine").text
    assert "<b>X</b>" not in listing
    assert "&lt;b&gt;X&lt;/b&gt;" in listing


def test_a_viewer_gets_403_on_every_action(client: TestClient, console: Console) -> None:
    add_accounts(console)
    original = quarantine_one(console.settings)
    dead = quarantine_one(console.settings, dead_letter=True)
    csrf = log_in(client, "victor", VIEWER_PASSWORD)
    for path in (f"/quarantine/{original}/release", f"/quarantine/{original}/purge",
                 f"/dead-letters/{dead}/requeue", f"/dead-letters/{dead}/purge", "/map"):
        response = client.post(path, data={"csrf": csrf, "term": "x"})
        assert response.status_code == 403, path
    assert len(Quarantine(console.settings.quarantine_dir).list()) == 2
    actions = [a for _, a, _, _ in PseudonymStore(console.settings.database_url).audit_entries()]
    assert actions.count("web denied") == 5
    assert "map lookup" not in actions


def test_actions_need_the_session_csrf_token(client: TestClient, console: Console) -> None:
    add_accounts(console)
    original = quarantine_one(console.settings)
    log_in(client, "alice", ADMIN_PASSWORD)
    assert client.post(f"/quarantine/{original}/purge").status_code == 403
    assert client.post(f"/quarantine/{original}/purge", data={"csrf": "forged"}).status_code == 403
    assert len(Quarantine(console.settings.quarantine_dir).list()) == 1


def test_an_admin_purges_and_filters_by_reason(client: TestClient, console: Console) -> None:
    add_accounts(console)
    original = quarantine_one(console.settings)
    csrf = log_in(client, "alice", ADMIN_PASSWORD)
    assert original in client.get("/quarantine?reason=malformed").text
    assert original not in client.get("/quarantine?reason=leak-detected").text
    response = client.post(f"/quarantine/{original}/purge", data={"csrf": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/quarantine?notice=purged"
    assert Quarantine(console.settings.quarantine_dir).list() == []
    audit = PseudonymStore(console.settings.database_url).audit_entries()
    assert any(a == "web purge" and q.startswith(original) and who == "alice"
               for _, a, q, who in audit)


def test_an_admin_requeues_a_dead_letter_into_the_spool(client: TestClient,
                                                        console: Console) -> None:
    from gateway.spool import Spool

    add_accounts(console)
    dead = quarantine_one(console.settings, dead_letter=True)
    csrf = log_in(client, "alice", ADMIN_PASSWORD)
    response = client.post(f"/dead-letters/{dead}/requeue", data={"csrf": csrf})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dead-letters?notice=requeued"
    assert Quarantine(console.settings.quarantine_dir).list() == []
    assert len(Spool(console.settings.spool_dir).ids()) == 1


def test_an_admin_releases_an_original_into_the_spool_de_identified(
        client: TestClient, console: Console) -> None:
    from pydicom import dcmread

    from gateway.spool import Spool

    add_accounts(console)
    original = quarantine_one(console.settings)  # its cause fixed: the instance itself is good
    csrf = log_in(client, "alice", ADMIN_PASSWORD)
    response = client.post(f"/quarantine/{original}/release", data={"csrf": csrf})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/quarantine?notice=released"
    assert Quarantine(console.settings.quarantine_dir).list() == []
    [spooled] = Spool(console.settings.spool_dir).entries()
    released = dcmread(spooled.path)
    assert released.PatientIdentityRemoved == "YES"
    assert PATIENT_NAME not in str(released.PatientName)
    assert released.PatientID != "MRN-SECRET-7"


def test_map_lookup_is_for_admins_and_audited(client: TestClient, console: Console) -> None:
    from gateway.deid.engine import Pseudonym

    add_accounts(console)
    store = PseudonymStore(console.settings.database_url)
    store.record([Pseudonym("patient", "MRN-42", "ANON-XYZ")])
    csrf = log_in(client, "alice", ADMIN_PASSWORD)
    page = client.post("/map", data={"csrf": csrf, "term": "ANON-XYZ"})
    assert page.status_code == 200
    assert "MRN-42" in page.text
    assert ("map lookup", "ANON-XYZ", "alice") in [(a, q, who) for _, a, q, who in
                                                   store.audit_entries()]
    store.close()


# --- the user command ----------------------------------------------------------------------------


def test_user_add_list_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import io

    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))
    assert main(["user", "add", "alice", "--role", "admin", "--password-stdin",
                 "--config", str(config)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["user", "add", "bob", "--role", "viewer", "--password-stdin",
                 "--config", str(config)]) == 2
    assert main(["user", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "alice\tadmin" in out and "bob" not in out and ADMIN_PASSWORD not in out
    assert main(["user", "remove", "alice", "--config", str(config)]) == 0
    assert main(["user", "remove", "alice", "--config", str(config)]) == 1


def test_web_address_is_validated_naming_the_key(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"web\.address: '8080' is not host:port"):
        parse_settings({"web": {"address": "8080"}})
    assert settings.web.address == "127.0.0.1:8080"
    assert parse_settings({}).web.address == ""
