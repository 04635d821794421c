"""The web console in a real browser (Playwright driving Debian's Chromium) against a real
serving gateway, a dcmtk archive and dcmtk senders: login, dashboard numbers equal to
``status --json``, a viewer who sees no patient data and cannot act, a purge that asks first,
and a dead letter requeued from the page that reaches the archive. Screenshots of the dashboard
and the quarantine page: set WEB_SCREENSHOTS_TO_DOCS=1 to write them to docs/ (as committed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from netpeers import (
    Archive,
    DestinationSpec,
    GatewayProcess,
    Peers,
    free_port,
    requires_dcmtk,
    store_file_as_is,
    storescu,
    write_compressed,
    write_study,
)
from pydicom.uid import generate_uid

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    requires_dcmtk,
    pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian chromium package "
                       "(scripts/install-system-deps.sh installs it)"),
]
playwright_api = pytest.importorskip("playwright.sync_api")

PATIENT_NAME, PATIENT_ID = "Webtest^Patricia", "MRN-WEB-4711"
BROKEN_NAME, BROKEN_ID = "Brokenweb^Bernard", "MRN-WEB-BROKEN"
SECRET_STRINGS = ("Webtest", "Patricia", "MRN-WEB", "Brokenweb", "Bernard")
ADMIN, VIEWER = ("ada", "admin password 1"), ("vic", "viewer password 1")
DOCS = Path(__file__).resolve().parent.parent / "docs"
TIMEOUT_MS = 10_000


@dataclass
class Scene:
    gateway: GatewayProcess
    archive: Archive
    base: str
    dead_sop_uid: str


def add_user(gateway: GatewayProcess, name: str, password: str, role: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "user", "add", name, "--role", role,
         "--password-stdin", "--config", str(gateway.config_path)],
        cwd=gateway.workdir, input=password + "\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def write_without_sop_instance_uid(folder: Path) -> Path:
    from netpeers import ct_template

    ds = ct_template()
    ds.PatientName, ds.PatientID = BROKEN_NAME, BROKEN_ID
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.SOPInstanceUID
    path = folder / "no-sop-instance-uid.dcm"
    ds.save_as(path, enforce_file_format=False)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """3 CT instances delivered, a JPEG 2000 one the archive refuses (a dead letter) and a
    malformed one quarantined, all of one known patient name."""
    tmp = tmp_path_factory.mktemp("web")
    peers = Peers(tmp)
    try:
        archive = peers.archive(accept_all=False)  # uncompressed only: the JPEG 2000 is refused
        web_port = free_port()
        gateway = peers.gateway(
            [DestinationSpec("archive", archive.port)],
            forward_extra=f'convert = false\n\n[web]\naddress = "127.0.0.1:{web_port}"\n')
        add_user(gateway, *ADMIN, "admin")
        add_user(gateway, *VIEWER, "viewer")
        src = tmp / "src"
        study = write_study(src, PATIENT_ID, PATIENT_NAME, series=1, per_series=3, tiny=True)
        j2k = write_compressed(src)
        j2k_ds = pydicom.dcmread(j2k.path)
        j2k_ds.PatientName, j2k_ds.PatientID = PATIENT_NAME, PATIENT_ID
        j2k_ds.save_as(j2k.path, enforce_file_format=True)
        sent = storescu(gateway.port, [*study.paths, j2k.path])
        assert len(sent.acknowledged()) == 4, sent.output
        assert store_file_as_is(gateway.port, write_without_sop_instance_uid(src)) == 0
        gateway.wait_status(30, "3 forwarded, 1 dead letter, 1 quarantined",
                            lambda r: r["pending"] == 0 and r["forwarded"] == 3
                            and r["dead_lettered"] == 1 and r["quarantined"] == 1)
        dead = [r for r in gateway.quarantine() if r["context"].get("dead_letter")]
        kept = gateway.workdir / "var" / "quarantine" / dead[0]["id"] / dead[0].get(
            "file", "original.dcm")
        yield Scene(gateway, archive, f"http://127.0.0.1:{web_port}",
                    str(pydicom.dcmread(kept).SOPInstanceUID))
    finally:
        peers.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    yield opened
    context.close()


def log_in(page: Any, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def dashboard_after_refresh(page: Any, base: str) -> None:
    """The dashboard once its script has fetched /api/status at least once."""
    page.goto(f"{base}/")
    page.wait_for_selector("body[data-refreshed]", state="attached")


def test_login_and_dashboard_numbers_equal_status_json(scene: Scene, page: Any) -> None:
    page.goto(f"{scene.base}/quarantine")
    assert page.url == f"{scene.base}/login"  # not logged in: to the login page
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert "Wrong name or password." in page.inner_text("main")
    log_in(page, scene.base, *ADMIN)
    dashboard_after_refresh(page, scene.base)
    report = scene.gateway.status_sections()
    node, cluster = report["node"], report["cluster"]
    shown = {field: page.inner_text(f"[data-field='{field}']") for field in (
        "cluster.received", "cluster.forwarded", "cluster.quarantined", "node.pending",
        "cluster.dead_lettered", "node.quarantine.originals", "node.quarantine.dead_letters")}
    assert shown == {
        "cluster.received": str(cluster["received"]), "cluster.forwarded": str(cluster["forwarded"]),
        "cluster.quarantined": str(cluster["quarantined"]), "node.pending": str(node["pending"]),
        "cluster.dead_lettered": str(cluster["dead_lettered"]),
        "node.quarantine.originals": str(node["quarantine"]["originals"]),
        "node.quarantine.dead_letters": str(node["quarantine"]["dead_letters"]),
    }
    assert shown["cluster.received"] == "4" and shown["cluster.forwarded"] == "3"
    assert page.inner_text("#destinations tbody").split("\t")[0] == "archive"
    assert "healthy" in page.inner_text("#node-state")
    assert page.is_visible("canvas#chart")


def test_a_viewer_sees_no_patient_data_and_cannot_act(scene: Scene, page: Any) -> None:
    log_in(page, scene.base, *VIEWER)
    for path in ("/", "/quarantine", "/dead-letters", "/api/status"):
        page.goto(f"{scene.base}{path}")
        html = page.content()
        assert not [s for s in SECRET_STRINGS if s in html], path
    page.goto(f"{scene.base}/quarantine")
    assert page.locator("#entries tbody tr").count() == 1
    assert "malformed" in page.inner_text("#entries")
    assert "MODALITY" in page.inner_text("#entries")  # the calling AE
    assert page.locator("button", has_text="Release").count() == 0
    assert page.locator("button", has_text="Purge").count() == 0
    page.goto(f"{scene.base}/dead-letters")
    assert page.locator("button", has_text="Requeue").count() == 0
    record_id = page.get_attribute("#entries tbody tr", "data-id")
    csrf = page.get_attribute("input[name=csrf]", "value")  # the logout form's token
    refused = page.request.post(f"{scene.base}/dead-letters/{record_id}/requeue",
                                form={"csrf": csrf})
    assert refused.status == 403
    page.goto(f"{scene.base}/map")
    assert "Not allowed" in page.inner_text("main")
    assert len(scene.gateway.quarantine()) == 2


def test_screenshots_of_dashboard_and_quarantine(scene: Scene, page: Any,
                                                 tmp_path: Path) -> None:
    log_in(page, scene.base, *ADMIN)
    dashboard_after_refresh(page, scene.base)
    shots = {"web-dashboard.png": tmp_path / "dashboard.png",
             "web-quarantine.png": tmp_path / "quarantine.png"}
    page.screenshot(path=str(shots["web-dashboard.png"]), full_page=True)
    page.goto(f"{scene.base}/quarantine")
    page.screenshot(path=str(shots["web-quarantine.png"]), full_page=True)
    for shot in shots.values():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("WEB_SCREENSHOTS_TO_DOCS") == "1":
        for name, shot in shots.items():
            shutil.copyfile(shot, DOCS / name)


def test_purge_asks_first_and_a_dismissed_question_purges_nothing(scene: Scene,
                                                                   page: Any) -> None:
    log_in(page, scene.base, *ADMIN)
    page.goto(f"{scene.base}/quarantine")
    questions: list[str] = []

    def answer(dialog: Any, accept: bool) -> None:
        questions.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    page.click("button:has-text('Purge')")
    assert page.locator("#entries tbody tr[data-id]").count() == 1  # still there
    assert len(scene.gateway.quarantine()) == 2
    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    page.click("button:has-text('Purge')")
    page.wait_for_url(f"{scene.base}/quarantine?notice=purged")
    assert "Nothing here." in page.inner_text("#entries")
    assert questions == ["Purge this entry? The instance is deleted for good."] * 2
    remaining = scene.gateway.quarantine()
    assert len(remaining) == 1 and remaining[0]["context"].get("dead_letter")


def test_requeue_from_the_page_delivers_the_dead_letter(scene: Scene, page: Any) -> None:
    scene.archive.stop()
    scene.archive.accept_all = True  # the archive learns JPEG 2000
    scene.archive.start()
    log_in(page, scene.base, *ADMIN)
    page.goto(f"{scene.base}/dead-letters")
    page.click("button:has-text('Requeue')")
    page.wait_for_url(f"{scene.base}/dead-letters?notice=requeued")
    assert "Nothing here." in page.inner_text("#entries")
    # picked up by the gateway's spool rescan (entries older than 10 s, every 2 s here)
    report = scene.gateway.wait_forwarded(4, timeout=45)
    assert report["destinations"]["archive"]["forwarded"] == 4
    late = [ds for ds in scene.archive.datasets() if ds.SOPInstanceUID == scene.dead_sop_uid]
    assert len(late) == 1 and late[0].PatientIdentityRemoved == "YES"
    assert scene.gateway.stop() == 0  # the console stops with serve
