"""
The web interface in real headless Chromium, driven by
Selenium, against a real netshare (C{twistd -n netshare --web ...}) on
loopback: sign-in, uploads with progress, downloads compared byte for
byte, a protected file, a tweet seen live in another browser, an admin's
edit reaching a sync client (a raw line connection on the personnel port),
the dashboard's charts moving, a non-admin without admin controls, and
screenshots of every page at desktop and phone width.

Then the same requests without the interface (plain C{http.client}) get
the same refusals: the interface hides controls, the server decides.

Chromium and its driver are Debian's (C{make browser} installs them);
when either is missing these tests fail, saying so: they are never
skipped.  C{NETSHARE_SCREENSHOTS=1} writes the screenshots to
C{docs/screenshots/} (otherwise to a temporary directory, so a test run
does not rewrite committed files).
"""

import base64
import http.client
import json
import os
import random
import re

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import DB_PARAMS, empty_database_url
from tests.support import ROOT, LineConn, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20
SCREENSHOTS = os.path.join(ROOT, "docs", "screenshots")
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}

PASSWORDS = {"admin": "adminpw", "alice": "alice-pw-1", "bob": "bob-pw-22", "syncer": "sync-pw-3"}


def require_browser():
    """Fail (never skip) without Chromium or its driver."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            "the web interface tests need Debian's chromium and chromium-driver "
            "(missing: %s); `make browser` installs them" % ", ".join(missing)
        )


# -- the server ------------------------------------------------------------------


class Api:
    """Plain HTTP to the web listener (setup, and the refusals test)."""

    def __init__(self, port):
        self.port = port

    def call(self, method, path, body=None, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            h = dict(headers or {})
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            content = resp.read()
            parsed = None
            if content and "json" in (resp.getheader("Content-Type") or ""):
                parsed = json.loads(content)
            return resp.status, parsed, resp
        finally:
            conn.close()

    def login(self, user):
        status, body, resp = self.call(
            "POST", "/api/session", {"user": user, "password": PASSWORDS[user]}
        )
        assert status == 201, (status, body)
        cookie = resp.getheader("Set-Cookie").split(";", 1)[0]
        return body, cookie

    def bearer(self, user):
        body, _ = self.login(user)
        return {"Authorization": "Bearer " + body["token"]}


@pytest.fixture(scope="module", params=DB_PARAMS)
def server(request, tmp_path_factory):
    require_browser()
    kind = request.param
    base = tmp_path_factory.mktemp("web-ui-%s" % kind)
    url = empty_database_url(request, kind, base)
    srv = ServerProcess(base / "data", db=url, web=True)
    srv.start()
    try:
        c = LineConn(srv.ports["personnel"], timeout=WAIT)
        assert c.readline().startswith("220 ")
        for name in ("alice", "bob", "syncer"):
            assert c.cmd("REGISTER %s %s" % (name, PASSWORDS[name]))[0].startswith("201 ")
        c.close()
        srv.api = Api(srv.ports["web"])
        srv.url = "http://127.0.0.1:%d/" % srv.ports["web"]
        status, _, resp = srv.api.call("GET", "/")
        if status != 200 or not resp.getheader("Content-Type", "").startswith("text/html"):
            pytest.fail(
                "the web listener does not serve the interface at / (%d): netshare/web/site.py "
                "must serve netshare/web/static_site.py's static_root()" % status
            )
        admin = srv.api.bearer("admin")
        for i in range(1, 8):
            status, body, _ = srv.api.call(
                "POST",
                "/api/people",
                {
                    "ssn": "100-00-%04d" % i,
                    "name": ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Frances"][i - 1],
                    "surname": [
                        "Lovelace",
                        "Hopper",
                        "Turing",
                        "Dijkstra",
                        "Liskov",
                        "Thompson",
                        "Allen",
                    ][i - 1],
                    "job": "engineer",
                    "salary": "%d000.00" % (50 + i),
                },
                headers=admin,
            )
            assert status == 201, (status, body)
        yield srv
    finally:
        srv.terminate()
        srv.kill()


# -- browsers --------------------------------------------------------------------


class Browser:
    """One Chromium (its own profile, cookies and download directory)."""

    def __init__(self, server, downloads):
        self.server = server
        self.downloads = str(downloads)
        os.makedirs(self.downloads, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1280,800",
            "--force-color-profile=srgb",
            "--force-prefers-reduced-motion",
            "--lang=en-US",
        ):
            options.add_argument(arg)
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": self.downloads,
                "download.prompt_for_download": False,
                "download.directory_upgrade": True,
                "profile.default_content_setting_values.automatic_downloads": 1,
                "safebrowsing.enabled": True,
            },
        )
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.log = []
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.driver.set_page_load_timeout(WAIT)
        self.driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": self.downloads}
        )

    def quit(self):
        self.driver.quit()

    # waiting and finding

    def wait(self, condition, timeout=WAIT, what=None):
        try:
            # Tables are drawn again on every refresh: an element found a
            # moment ago may be gone; the condition is simply asked again.
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.05,
                ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
            ).until(condition)
        except TimeoutException:
            raise AssertionError(
                "timed out waiting for %s\nconsole: %s" % (what or condition, self.console()[-20:])
            ) from None

    def find(self, css, timeout=WAIT):
        return self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout, css)

    def all(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text_in(self, css, text, timeout=WAIT):
        self.wait(
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
            timeout,
            "%r in %s" % (text, css),
        )
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def console(self):
        """Every console message so far (the driver hands each out once)."""
        self.log.extend(e["message"] for e in self.driver.get_log("browser"))
        return self.log

    def errors(self):
        """What must never happen: a Content-Security-Policy violation, or
        an exception nobody caught."""
        return [e for e in self.console() if "Content Security Policy" in e or "Uncaught" in e]

    # the application

    def open(self, page=""):
        self.driver.get(self.server.url + ("#/" + page if page else ""))

    def go(self, page):
        self.driver.execute_script("window.location.hash = arguments[0]", "#/" + page)
        self.find('section[data-page="%s"]' % page)

    def sign_in(self, user, password=None):
        self.open()
        self.find("#signin-user").send_keys(user)
        self.find("#signin-password").send_keys(password or PASSWORDS[user])
        self.find("#signin-submit").click()
        self.text_in("#who-name", user)
        self.find('section[data-page="files"]')

    def sign_out(self):
        self.find("#signout").click()
        self.find("#signin-form")

    def type(self, css, text, clear=True):
        field = self.find(css)
        if clear:
            field.clear()
        field.send_keys(text)
        return field

    def downloaded(self, name, size):
        """The bytes of a finished download of C{name}."""
        path = os.path.join(self.downloads, name)

        def done(_driver):
            return (
                os.path.exists(path)
                and os.path.getsize(path) == size
                and not any(n.endswith(".crdownload") for n in os.listdir(self.downloads))
            )

        self.wait(done, what="download of %s into %s" % (name, self.downloads))
        with open(path, "rb") as f:
            return f.read()

    def confirm(self, ok=True):
        self.find("dialog[open]")
        self.find("#dialog-ok" if ok else "#dialog-cancel").click()
        self.wait(
            EC.invisibility_of_element_located((By.CSS_SELECTOR, "dialog[open]")),
            what="the dialog to close",
        )

    def admin_controls(self):
        return self.all("[data-admin]")


@pytest.fixture
def browsers(server, tmp_path):
    """A factory of browsers, every one quit at teardown."""
    made = []

    def make(user=None):
        b = Browser(server, tmp_path / ("downloads-%d" % len(made)))
        made.append(b)
        if user:
            b.sign_in(user)
        return b

    yield make
    for b in made:
        try:
            assert not b.errors(), b.errors()
        finally:
            b.quit()


def random_bytes(n, seed):
    return random.Random(seed).randbytes(n)


# -- the tests --------------------------------------------------------------------


def test_sign_in_wrong_then_right_and_out(browsers):
    b = browsers()
    b.open("files")
    b.find("#signin-user").send_keys("alice")
    b.find("#signin-password").send_keys("not her password")
    b.find("#signin-submit").click()
    b.wait(lambda d: d.find_element(By.ID, "signin-error").text.strip(), what="sign-in error")
    # The server's own words, as a plain request gets them.
    status, body, _ = b.server.api.call(
        "POST", "/api/session", {"user": "alice", "password": "not her password"}
    )
    assert status == 401
    assert b.find("#signin-error").text == body["error"]
    assert b.find("#signin-form")
    b.type("#signin-password", PASSWORDS["alice"])
    b.find("#signin-submit").click()
    b.text_in("#who-name", "alice")
    assert b.find("#who-role").text == "user"
    # A reload keeps the session (cookie) and learns its CSRF token again.
    b.driver.refresh()
    b.text_in("#who-name", "alice")
    b.go("ttweet")
    b.type("#subscribe-tag", "#reload")
    b.find("#subscribe-button").click()
    b.text_in("#subscriptions", "#reload")
    b.sign_out()
    b.text_in("#signin-notice", "Signed out.")
    # The session is over on the server too.
    b.driver.refresh()
    b.find("#signin-form")

    # A session ended elsewhere (here: by its owner, over the API) sends
    # the page back to the sign-in form at its next request.
    b.type("#signin-user", "alice")
    # By keyboard alone this time: the form submits on Enter.
    b.type("#signin-password", PASSWORDS["alice"]).send_keys(Keys.ENTER)
    b.text_in("#who-name", "alice")
    # The header's links and buttons are reachable with Tab.
    focusable = b.driver.execute_script(
        "return [...document.querySelectorAll('header a, header button')]"
        ".filter(e => e.offsetParent !== null && e.tabIndex >= 0).length"
    )
    assert focusable >= 5
    api = b.server.api
    mine, _ = api.login("alice")
    bearer = {"Authorization": "Bearer " + mine["token"]}
    status, sessions, _ = api.call("GET", "/api/sessions", headers=bearer)
    assert status == 200
    for s in sessions["items"]:
        if s["id"] != mine["id"]:
            assert api.call("DELETE", "/api/sessions/%s" % s["id"], headers=bearer)[0] == 204
    b.find("#files-refresh").click()
    b.text_in("#signin-notice", "Your session has ended")
    assert not b.driver.find_element(By.ID, "nav").is_displayed()


def test_upload_with_progress_listed_and_downloaded(browsers, tmp_path):
    b = browsers("alice")
    content = random_bytes(6 * 1024 * 1024 + 123, 1)
    src = tmp_path / "report one.bin"
    src.write_bytes(content)
    # The file input is visually hidden (its button opens it).
    b.wait(EC.presence_of_element_located((By.ID, "upload-input")))
    b.driver.find_element(By.ID, "upload-input").send_keys(str(src))
    item = b.find('#uploads li[data-name="report one.bin"]')
    b.wait(lambda d: item.get_attribute("data-state") == "done", what="upload done")
    assert int(item.get_attribute("data-loaded")) == len(content)
    info = item.find_element(By.CSS_SELECTOR, ".progress-text").text
    assert info.startswith("stored"), info
    row = b.find('#files-body tr[data-name="report one.bin"]')
    cells = [td.text for td in row.find_elements(By.CSS_SELECTOR, "th, td")]
    assert cells[0] == "report one.bin"
    assert cells[1] == "6.00 MiB"
    assert cells[2] == "alice"
    assert cells[4] == "public" and cells[5] == "no"
    assert "1 file" in b.find("#quota-text").text
    row.find_element(By.CSS_SELECTOR, 'button[data-action="download"]').click()
    assert b.downloaded("report one.bin", len(content)) == content

    # Drag and drop: a file dropped on the zone is uploaded the same way.
    b.driver.execute_script(
        """
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(arguments[0])], 'dropped.txt'));
        const zone = document.getElementById('dropzone');
        const opts = {dataTransfer: dt, bubbles: true, cancelable: true};
        zone.dispatchEvent(new DragEvent('dragover', opts));
        zone.dispatchEvent(new DragEvent('drop', opts));
        """,
        list(b"dropped bytes\n"),
    )
    b.find('#files-body tr[data-name="dropped.txt"]')

    # Sorting by size puts the small one first, then the other way.
    b.find('th[data-key="size"] button').click()
    names = [r.get_attribute("data-name") for r in b.all("#files-body tr[data-name]")]
    assert names == ["dropped.txt", "report one.bin"]
    b.find('th[data-key="size"] button').click()
    names = [r.get_attribute("data-name") for r in b.all("#files-body tr[data-name]")]
    assert names == ["report one.bin", "dropped.txt"]
    # Filtering.
    b.type("#files-filter", "drop")
    b.wait(lambda d: len(b.all("#files-body tr[data-name]")) == 1, what="filter")

    # Delete asks first; cancelling keeps the file.
    b.type("#files-filter", "")
    b.find("#files-filter").send_keys(Keys.BACKSPACE)
    row = b.find('#files-body tr[data-name="dropped.txt"]')
    row.find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
    b.confirm(ok=False)
    assert b.all('#files-body tr[data-name="dropped.txt"]')
    row.find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
    b.confirm(ok=True)
    b.wait(lambda d: not b.all('#files-body tr[data-name="dropped.txt"]'), what="deleted")


def test_upload_cancel_and_hidden_files(browsers, tmp_path):
    b = browsers("bob")
    b.find("#upload-hidden").click()
    secret = tmp_path / "bob-hidden.txt"
    secret.write_bytes(b"only by name\n")
    b.driver.find_element(By.ID, "upload-input").send_keys(str(secret))
    b.wait(
        lambda d: (
            b.find('#uploads li[data-name="bob-hidden.txt"]').get_attribute("data-state") == "done"
        ),
        what="hidden upload",
    )
    assert not b.all('#files-body tr[data-name="bob-hidden.txt"]')
    b.find("#view-hidden").click()
    row = b.find('#files-body tr[data-name="bob-hidden.txt"]')
    assert "hidden" in row.text
    assert b.find("#view-hidden").text == "My hidden files"

    # A large upload, slowed to a crawl, cancelled half-way: nothing stored.
    big = tmp_path / "cancel-me.bin"
    big.write_bytes(random_bytes(48 * 1024 * 1024, 2))
    b.driver.execute_cdp_cmd("Network.enable", {})
    b.driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 5,
            "downloadThroughput": -1,
            "uploadThroughput": 2 * 1024 * 1024,
        },
    )
    try:
        b.find("#upload-hidden").click()  # public this time
        b.driver.find_element(By.ID, "upload-input").send_keys(str(big))
        item = b.find('#uploads li[data-name="cancel-me.bin"]')
        b.wait(lambda d: int(item.get_attribute("data-loaded") or 0) > 0, what="some progress")
        text = item.find_element(By.CSS_SELECTOR, ".progress-text").text
        assert re.search(r" of 48\.0 MiB · .+/s · .+ left", text), text
        item.find_element(By.CSS_SELECTOR, "button").click()
        b.wait(lambda d: item.get_attribute("data-state") == "cancelled", what="cancelled")
    finally:
        b.driver.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
    b.find("#view-public").click()
    b.find("#files-refresh").click()
    b.find("#files-count")
    assert not b.all('#files-body tr[data-name="cancel-me.bin"]')


def test_protected_file_wrong_then_right_password(browsers, tmp_path):
    owner = browsers("alice")
    content = random_bytes(300_000, 3)
    src = tmp_path / "locked.bin"
    src.write_bytes(content)
    owner.type("#upload-password", "open sesame")
    owner.driver.find_element(By.ID, "upload-input").send_keys(str(src))
    owner.wait(
        lambda d: (
            owner.find('#uploads li[data-name="locked.bin"]').get_attribute("data-state") == "done"
        ),
        what="protected upload",
    )
    row = owner.find('#files-body tr[data-name="locked.bin"]')
    assert "protected" in row.text

    b = browsers("bob")
    row = b.find('#files-body tr[data-name="locked.bin"]')
    row.find_element(By.CSS_SELECTOR, 'button[data-action="download"]').click()
    b.find("dialog[open]")
    b.type("#download-password", "wrong guess")
    b.find("#dialog-ok").click()
    b.wait(lambda d: b.find("#download-password-error").text.strip(), what="wrong password error")
    error = b.find("#download-password-error").text
    assert "password" in error, error
    assert b.find("#download-password").get_attribute("aria-invalid") == "true"
    assert not os.listdir(b.downloads)
    b.type("#download-password", "open sesame")
    b.find("#dialog-ok").click()
    assert b.downloaded("locked.bin", len(content)) == content
    b.wait(EC.invisibility_of_element_located((By.CSS_SELECTOR, "dialog[open]")))
    # Still signed in: a wrong file password is not a lost session.
    assert b.find("#who-name").text == "bob"
    status, body, _ = b.server.api.call(
        "GET",
        "/api/files/locked.bin",
        headers={**b.server.api.bearer("bob"), "X-File-Password": "x"},
    )
    assert body["error"] == error


def test_tweet_typed_in_one_session_appears_live_in_another(browsers):
    reader = browsers("bob")
    reader.go("ttweet")
    reader.type("#subscribe-tag", "#ALL")
    reader.find("#subscribe-button").click()
    reader.text_in("#subscriptions", "#ALL")
    reader.wait(
        lambda d: reader.find("#stream-state").get_attribute("data-state") == "open",
        what="the event stream open",
    )

    writer = browsers("alice")
    writer.go("ttweet")
    # The counter follows the typing; the rules are the line protocol's.
    writer.type("#tweet-message", "é" * 151)
    writer.text_in("#tweet-counter", "151 / 150 characters · 302 bytes")
    assert writer.find("#tweet-message-error").text == "message length illegal"
    writer.find("#tweet-send").click()
    assert writer.find("#tweet-message-error").text == "message length illegal"
    writer.type("#tweet-message", "   ")
    writer.find("#tweet-send").click()
    writer.text_in("#tweet-message-error", "message format illegal")
    writer.type("#tweet-message", "hello from alice ✓")
    writer.text_in("#tweet-counter", "18 / 150 characters · 20 bytes")
    writer.type("#tweet-tags", "#ALL")
    writer.find("#tweet-send").click()
    writer.text_in("#tweet-tags-error", "hashtag illegal format")
    writer.type("#tweet-tags", "#cs#3251")
    writer.find("#tweet-send").click()
    writer.text_in("#tweet-sent", "Sent")

    reader.text_in("#timeline", "hello from alice ✓")
    tweet = reader.find("#timeline li.tweet")
    assert "alice" in tweet.text and "#cs#3251" in tweet.text

    # At most three subscriptions, said as the line protocol says it.
    for tag in ("#a", "#b"):
        reader.type("#subscribe-tag", tag)
        reader.find("#subscribe-button").click()
        reader.text_in("#subscriptions", tag)
    reader.type("#subscribe-tag", "#c")
    reader.find("#subscribe-button").click()
    reader.text_in(
        "#subscribe-tag-error",
        "operation failed: sub #c failed, already exists or exceeds 3 limitation",
    )
    reader.find('#subscriptions button[data-tag="#a"]').click()
    reader.wait(lambda d: not reader.all('#subscriptions button[data-tag="#a"]'), what="unsub")

    # Users and their tweets.
    reader.type("#user-tweets-name", "alice")
    reader.find("#user-tweets-button").click()
    reader.text_in("#user-tweets", "hello from alice ✓")
    reader.find("#users-refresh").click()
    reader.text_in("#users", "alice")
    reader.text_in("#users", "bob")


def test_admin_edits_a_person_and_a_sync_client_receives_it(browsers, server):
    sync = LineConn(server.ports["personnel"], timeout=WAIT)
    try:
        assert sync.readline().startswith("220 ")
        assert sync.cmd("LOGIN syncer %s" % PASSWORDS["syncer"])[0].startswith("230 ")
        assert sync.cmd("SYNC") == ["200 syncing"]

        admin = browsers("admin")
        admin.go("personnel")
        admin.find('#clients-body tr[data-client="syncer"]')
        admin.text_in('#clients-body tr[data-client="syncer"]', "connected")

        admin.type("#people-q", "Hopper")
        admin.find("#people-search").click()
        admin.wait(lambda d: len(admin.all("#people-body tr[data-ssn]")) == 1, what="search")
        row = admin.find('#people-body tr[data-ssn="100-00-0002"]')
        row.find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
        admin.find("dialog[open]")
        # Field validation, with the server's words, next to the field.
        admin.type("#person-name", " ")
        admin.find("#dialog-ok").click()
        admin.text_in("#person-name-error", "name may not be empty")
        admin.type("#person-name", "Grace")
        admin.type("#person-job", "rear admiral")
        admin.find("#dialog-ok").click()
        admin.wait(EC.invisibility_of_element_located((By.CSS_SELECTOR, "dialog[open]")))
        admin.text_in('#people-body tr[data-ssn="100-00-0002"]', "rear admiral")

        # Console choice 1: send one person to one client.
        admin.type("#op-ssn", "100-00-0002")
        admin.type("#op-client", "syncer")
        admin.find("#op-1").click()
        admin.text_in("#op-result", "Queued 1 message")
        line = sync.readline()
        assert line.startswith("610 "), line
        seq, action, person = line.split(" ", 3)[1:]
        assert action == "SAVE"
        person = json.loads(person)
        assert person["ssn"] == "100-00-0002" and person["job"] == "rear admiral"
        assert sync.cmd("ACK %s" % seq) == ["200 ok"]
        admin.wait(
            lambda d: admin.find('#clients-body tr[data-client="syncer"]').text.split()[2] == seq,
            what="the acknowledged seq shown",
        )

        # A bulk choice asks first; declined, nothing is queued.
        admin.find("#op-6").click()
        admin.text_in("#dialog-title", "delete all personnel from all clients")
        admin.confirm(ok=False)
        admin.text_in("#op-result", "Not confirmed")
        # Confirmed: the client gets the DELETE_ALL.
        admin.find("#op-6").click()
        admin.confirm(ok=True)
        admin.text_in("#op-result", "Queued")
        line = sync.readline()
        assert line.split(" ", 3)[2] == "DELETE_ALL", line
        # An error from the server, next to the control that caused it.
        admin.type("#op-client", "nosuchclient")
        admin.find("#op-1").click()
        admin.text_in("#op-client-error", "no such client")
    finally:
        sync.close()


def test_admin_adds_and_deletes_a_person(browsers):
    admin = browsers("admin")
    admin.go("personnel")
    admin.find("#person-add").click()
    admin.find("dialog[open]")
    admin.type("#person-ssn", "bad ssn!")
    admin.type("#person-name", "Margaret")
    admin.type("#person-surname", "Hamilton")
    admin.type("#person-salary", "9" * 33)
    admin.find("#dialog-ok").click()
    admin.text_in("#person-ssn-error", "invalid ssn: 1-32 letters, digits or '-'")
    admin.text_in("#person-salary-error", "salary too long (at most 32 characters)")
    admin.type("#person-salary", "61000.00")
    # A refusal only the server can make (the ssn is taken), in the dialog.
    admin.type("#person-ssn", "100-00-0001")
    admin.find("#dialog-ok").click()
    admin.wait(lambda d: admin.find("#dialog-error").text.strip(), what="the server's refusal")
    status, body, _ = admin.server.api.call(
        "POST",
        "/api/people",
        {"ssn": "100-00-0001", "name": "M", "surname": "H"},
        headers=admin.server.api.bearer("admin"),
    )
    assert status == 409 and admin.find("#dialog-error").text == body["error"]
    admin.type("#person-ssn", "200-00-0001")
    admin.find("#dialog-ok").click()
    admin.text_in("#person-info", "Added 200-00-0001")
    row = admin.find('#people-body tr[data-ssn="200-00-0001"]')
    assert "Hamilton" in row.text and "61000.00" in row.text

    row.find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
    admin.confirm(ok=True)
    admin.text_in("#person-info", "Deleted 200-00-0001")
    admin.wait(lambda d: not admin.all('#people-body tr[data-ssn="200-00-0001"]'), what="gone")


def test_dashboard_charts_update(browsers, server):
    admin = browsers("admin")
    admin.go("dashboard")
    canvas = admin.find("#chart-commands")
    admin.wait(lambda d: int(canvas.get_attribute("data-samples") or 0) >= 2, what="2 samples")
    before = admin.driver.execute_script("return arguments[0].toDataURL()", canvas)
    samples = int(canvas.get_attribute("data-samples"))
    # Some traffic for the charts to show.
    for _ in range(20):
        server.api.call("GET", "/healthz")
    admin.wait(
        lambda d: int(canvas.get_attribute("data-samples")) >= samples + 2, what="2 more samples"
    )
    after = admin.driver.execute_script("return arguments[0].toDataURL()", canvas)
    assert after != before
    legend = admin.find("#chart-commands + .legend")
    assert "web" in legend.text
    assert admin.find('#service-totals tr[data-service="web"]')
    admin.find("#lag-body")
    for chart in ("connections", "bytes", "history", "database", "latency", "lag"):
        assert int(admin.find("#chart-" + chart).get_attribute("data-samples")) >= 2


def test_a_non_admin_sees_no_admin_controls(browsers):
    admin = browsers("admin")
    admin.go("personnel")
    admin.find("#operator")
    assert len(admin.admin_controls()) > 10
    assert admin.find("#nav-dashboard").is_displayed()

    user = browsers("alice")
    assert not user.all("#nav-dashboard, a[href='#/dashboard']")
    for page in ("files", "ttweet", "personnel", "dashboard"):
        user.go(page)
        if page == "personnel":
            user.find("#people-body tr[data-ssn]")
            row = user.all("#people-body tr[data-ssn]")[0].text
            assert "*" in row  # the directory view: ssn masked
            assert not user.all("#person-add, #sync-clients, #operator, [data-action=edit]")
        if page == "dashboard":
            user.text_in("main", "for admins")
            assert not user.all("canvas")
        if page == "files":
            user.find("#files-body")
            assert user.find("#view-hidden").text == "My hidden files"
        # Not hidden: not there at all.
        found = [e.get_attribute("outerHTML") for e in user.admin_controls()]
        assert found == [], (page, found)


def test_screenshots_of_every_page(browsers, server, tmp_path):
    """Every page at desktop and phone width, without a horizontal scroll
    bar on the phone; written to docs/screenshots/ only when asked."""
    out = SCREENSHOTS if os.environ.get("NETSHARE_SCREENSHOTS") == "1" else str(tmp_path)
    os.makedirs(out, exist_ok=True)
    admin = Api(server.ports["web"]).bearer("admin")
    status, body, _ = server.api.call(
        "PUT",
        "/api/files/quarterly%20report.pdf",
        raw=random_bytes(2_400_000, 4),
        headers={**admin, "Content-Type": "application/octet-stream"},
    )
    assert status in (201, 409), (status, body)  # (409: a rerun on the same server)
    tweet = {"message": "release 1.8 is out", "hashtags": ["netshare"]}
    status, body, _ = server.api.call("POST", "/api/tweets", tweet, headers=admin)
    assert status == 201, (status, body)
    b = browsers()
    for size, (w, h) in SIZES.items():
        b.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": size == "phone"},
        )
        b.open()
        b.find("#signin-form")
        shot(b, out, "signin", size)
        b.sign_in("admin")
        for page in ("files", "ttweet", "personnel", "dashboard"):
            b.go(page)
            ready = {
                "files": "#files-body tr[data-name]",
                "ttweet": "#timeline li",
                "personnel": "#clients-body tr",
                "dashboard": "#service-totals tr",
            }[page]
            b.find(ready)
            if page == "dashboard":
                canvas = b.find("#chart-commands")
                b.wait(lambda d, c=canvas: int(c.get_attribute("data-samples") or 0) >= 3)
            shot(b, out, page, size)
        b.sign_out()


def shot(b, out, page, size):
    """The page as laid out (at most two screens high), once it is known not
    to scroll sideways."""
    width = b.driver.execute_script("return window.innerWidth")
    scroll = b.driver.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= width, "%s at %s width scrolls sideways (%d > %d)" % (
        page,
        size,
        scroll,
        width,
    )
    w, h = SIZES[size]
    content = b.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    height = min(max(h, content["height"]), 2 * h)
    clip = {"x": 0, "y": 0, "width": w, "height": height, "scale": 1}
    shot = b.driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    with open(os.path.join(out, "%s-%s.png" % (page, size)), "wb") as f:
        f.write(base64.b64decode(shot["data"]))


# -- without the interface: the same refusals -------------------------------------


def test_the_same_requests_without_the_interface_are_refused(server):
    api = server.api
    session, cookie = api.login("alice")
    csrf = session["csrf"]
    as_alice = {"Cookie": cookie, "X-CSRF-Token": csrf}

    # An admin's write from a user, with a perfect cookie and CSRF token: 403.
    status, body, _ = api.call(
        "POST", "/api/people", {"ssn": "x-1", "name": "X", "surname": "Y"}, headers=as_alice
    )
    assert (status, body["code"]) == (403, 531), body
    status, body, _ = api.call(
        "PUT", "/api/people/100-00-0001", {"job": "thief"}, headers=as_alice
    )
    assert (status, body["code"]) == (403, 531)
    status, body, _ = api.call("DELETE", "/api/people/100-00-0001", headers=as_alice)
    assert (status, body["code"]) == (403, 531)
    for verb in ("send", "remove"):
        status, body, _ = api.call(
            "POST", "/api/sync-clients/" + verb, {"client": "*", "id": "*"}, headers=as_alice
        )
        assert (status, body["code"]) == (403, 531)
    status, body, _ = api.call("GET", "/api/sync-clients", headers=as_alice)
    assert status == 403
    status, body, _ = api.call("GET", "/api/stats", headers=as_alice)
    assert status == 403
    # The directory view: no salary, the ssn masked.
    status, body, _ = api.call("GET", "/api/people?q=Ada", headers=as_alice)
    assert status == 200 and body["items"][0]["salary"] is None
    assert body["items"][0]["ssn"].startswith("*")

    # The cookie without the CSRF token: 403, whatever the request.
    no_csrf = {"Cookie": cookie}
    for method, path, payload in (
        ("POST", "/api/tweets", {"message": "forged"}),
        ("POST", "/api/subscriptions", {"hashtag": "#ALL"}),
        ("DELETE", "/api/session", None),
        ("POST", "/api/people", {"ssn": "x-2", "name": "X", "surname": "Y"}),
    ):
        status, body, _ = api.call(method, path, payload, headers=no_csrf)
        assert (status, body["code"], body["error"]) == (
            403,
            531,
            "missing or wrong CSRF token",
        ), (method, path, body)
    status, body, _ = api.call(
        "PUT", "/api/files/forged.txt", raw=b"x", headers={**no_csrf, "Content-Length": "1"}
    )
    assert status == 403, (status, body)
    status, body, _ = api.call(
        "POST", "/api/tweets", {"message": "forged"}, headers={**no_csrf, "X-CSRF-Token": "0" * 64}
    )
    assert status == 403
    # No session at all: 401.
    status, body, _ = api.call("GET", "/api/files")
    assert status == 401

    # The rules the interface checks as you type are the server's.
    status, body, _ = api.call("POST", "/api/tweets", {"message": "é" * 151}, headers=as_alice)
    assert body == {"code": 552, "error": "message length illegal"}, body
    status, body, _ = api.call("POST", "/api/tweets", {"message": " "}, headers=as_alice)
    assert body == {"code": 501, "error": "message format illegal"}, body
    status, body, _ = api.call(
        "POST", "/api/tweets", {"message": "x", "hashtags": ["ALL"]}, headers=as_alice
    )
    assert body == {"code": 553, "error": "hashtag illegal format"}, body

    # Someone else's file: a user may not delete it.
    admin = api.bearer("admin")
    status, body, _ = api.call(
        "PUT", "/api/files/admins.txt", raw=b"mine", headers={**admin, "Content-Length": "4"}
    )
    assert status == 201, (status, body)
    status, body, _ = api.call("DELETE", "/api/files/admins.txt", headers=as_alice)
    assert (status, body["code"]) == (403, 531)
    api.call("DELETE", "/api/files/admins.txt", headers=admin)

    # Signed out: the cookie is worth nothing.
    status, _, _ = api.call("DELETE", "/api/session", headers=as_alice)
    assert status == 204
    status, body, _ = api.call("GET", "/api/session", headers={"Cookie": cookie})
    assert status == 401


def test_static_files_are_served_with_a_strict_policy(server):
    api = server.api
    status, _, resp = api.call("GET", "/")
    assert status == 200
    assert resp.getheader("Content-Type") == "text/html; charset=utf-8"
    csp = resp.getheader("Content-Security-Policy")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe" not in csp
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("Referrer-Policy") == "no-referrer"
    status, _, resp = api.call("GET", "/static/js/app.js")
    assert status == 200 and resp.getheader("Content-Type").startswith("text/javascript")
    etag = resp.getheader("ETag")
    status, _, resp = api.call("GET", "/static/js/app.js", headers={"If-None-Match": etag})
    assert status == 304
    status, _, resp = api.call("GET", "/static/css/app.css")
    assert status == 200 and resp.getheader("Content-Type").startswith("text/css")
    for path in (
        "/static/",
        "/static/js/",
        "/static/../setup.cfg",
        "/static/%2e%2e/site.py",
        "/static/js/nope.js",
    ):
        status, _, resp = api.call("GET", path)
        assert status == 404, path
        assert resp.getheader("Content-Security-Policy") == csp
    status, _, resp = api.call("POST", "/", raw=b"")
    assert status in (404, 405)  # the interface's files are only read
    # Nothing in the interface's files that a strict policy would block.
    static = os.path.join(ROOT, "netshare", "web", "static")
    for base, _, names in os.walk(static):
        for name in names:
            with open(os.path.join(base, name), encoding="utf-8") as f:
                text = f.read()
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), name
            assert not re.search(
                r"\sstyle=|\son[a-z]+=\"|javascript:|eval\(|new Function", text
            ), name
            assert not re.search(r"https?://", text), name
