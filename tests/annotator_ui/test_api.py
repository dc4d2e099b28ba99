"""The HTTP API and pages against a real review database (SQLite file and PostgreSQL, see
``db_url``) and a real Lance dataset (TestClient)."""

from __future__ import annotations

import json
import re

import lance
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from annotator_ui.app import AppSettings, app_routes, create_app
from curation.reviewdb import ReviewDB
from pipelines.review import review_apply_action
from tests.helpers import PASSWORD, coco_rows, samples_table

XSS = '<img src=x onerror="alert(1)"><script>alert("x")</script>'


@pytest.fixture
def env(tmp_path, coco_dir, db_url):
    rows = coco_rows(coco_dir, limit=4)
    rows[1]["captions"][0]["text"] = XSS
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri)
    db = ReviewDB(db_url)
    db.set_meta("dataset", uri)
    db.add_user("admin", PASSWORD, "admin")
    db.add_user("alice", PASSWORD)
    db.add_user("bob", PASSWORD)
    items = []
    for pos, r in enumerate(rows):
        items.append(
            {
                "row_id": r["id"],
                "priority": float(10 - pos),
                "payload": {
                    "row_id": r["id"],
                    "pos": pos,
                    "version": 1,
                    "caption": r["captions"][0]["text"],
                    "neighbours": [{"row_id": rows[(pos + 1) % 4]["id"], "pos": (pos + 1) % 4, "sim": 0.5, "caption": "nb"}],
                },
            }
        )
    db.enqueue(items, "b1")
    app = create_app(AppSettings(db_url=db_url, max_body=16 * 1024), db, apply=review_apply_action(db_url))
    yield app, db, rows
    db.close()


def login(app, name):
    c = TestClient(app)
    r = c.post("/api/login", json={"username": name, "password": PASSWORD})
    assert r.status_code == 200
    c.headers["x-csrf-token"] = r.json()["csrf"]
    return c


def test_everything_but_login_and_health_needs_a_session(env):
    app, db, rows = env
    c = TestClient(app)
    assert c.get("/health").status_code == 200
    assert c.get("/login").status_code == 200
    checked = 0
    for route in app_routes(app):  # app.routes, with the included routers' routes flattened
        path = getattr(route, "path", "")
        if path in ("/health", "/login", "/api/login") or path.startswith("/static"):
            continue
        url = path.replace("{item_id}", "1").replace("{row_id}", rows[0]["id"])
        for m in sorted(getattr(route, "methods", None) or []):
            if m == "HEAD":
                continue
            r = c.request(m, url, data={"csrf": "x", "action": "accept"} if m == "POST" else None)
            assert r.status_code == 401, (m, url, r.status_code)
            checked += 1
    assert checked >= 12
    html = c.get("/", headers={"accept": "text/html"})
    assert html.status_code == 401 and 'href="/login"' in html.text
    assert c.post("/api/login", json={"username": "alice", "password": "nope-nope"}).status_code == 401


def test_session_cookie_flags_and_security_headers(env):
    app, _, _ = env
    c = TestClient(app)
    r = c.post("/api/login", json={"username": "alice", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    r = c.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    # the app's own time on every response (browsers' network panels and bench/review.py read it)
    m = re.fullmatch(r"app;dur=(\d+\.\d+)", r.headers["server-timing"])
    assert m and 0 < float(m.group(1)) < 60_000


def test_handler_threads_are_bounded_by_the_setting(tmp_path):
    """The handler thread pool follows ``threads`` (see ``create_app``'s lifespan); 0 is refused."""
    import anyio.to_thread
    from pydantic import ValidationError

    db_url = str(tmp_path / "r.sqlite")
    app = create_app(AppSettings(db_url=db_url, threads=3))

    @app.get("/_tokens")
    async def tokens():
        return {"tokens": anyio.to_thread.current_default_thread_limiter().total_tokens}

    with TestClient(app) as c:  # as a context manager: runs the lifespan, like uvicorn
        assert c.get("/_tokens").json() == {"tokens": 3}
    with pytest.raises(ValidationError, match="threads"):
        AppSettings(db_url=db_url, threads=0)
    app.state.db.close()


def test_login_form_needs_its_double_submit_cookie(env):
    app, _, _ = env
    c = TestClient(app)
    page = c.get("/login")
    tok = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    bad = TestClient(app).post("/login", data={"username": "alice", "password": PASSWORD, "csrf": tok}, follow_redirects=False)
    assert bad.status_code == 403  # a forged cross-site login form has no cookie
    ok = c.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": tok}, follow_redirects=False)
    assert ok.status_code == 303 and "rev_session" in ok.headers["set-cookie"]
    wrong = c.post("/login", data={"username": "alice", "password": "bad-password", "csrf": tok})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text


def test_annotator_boundaries(env):
    app, db, rows = env
    alice, bob, admin = login(app, "alice"), login(app, "bob"), login(app, "admin")
    a = alice.get("/api/next").json()["item"]
    b = bob.get("/api/next").json()["item"]
    assert a["id"] != b["id"] and "lease_user" not in a and "gold" not in a
    assert bob.get(f"/api/items/{a['id']}").status_code == 403  # cannot see alice's lease
    assert alice.get(f"/api/items/{a['id']}").status_code == 200
    assert bob.post(f"/api/items/{a['id']}/decision", json={"decision": "keep"}).status_code == 403
    assert bob.post(f"/api/items/{a['id']}/skip").status_code == 403
    # an item that does not exist is a 404 whatever is asked of it (reading and skipping were 403)
    for r in (
        bob.get("/api/items/99999"),
        bob.post("/api/items/99999/skip"),
        bob.post("/api/items/99999/decision", json={"decision": "keep"}),
    ):
        assert r.status_code == 404 and "no item 99999" in r.text, r.text
    for path in ("/admin", "/api/admin/stats", "/admin/export.jsonl"):
        assert alice.get(path).status_code == 403
        assert admin.get(path).status_code == 200
    # CSRF: the JSON API needs the header, forms need the field
    no_csrf = TestClient(app, cookies=dict(alice.cookies))
    assert no_csrf.post(f"/api/items/{a['id']}/decision", json={"decision": "keep"}).status_code == 403
    assert alice.post(f"/annotate/{a['id']}", data={"action": "accept", "csrf": "forged"}).status_code == 403
    # idempotent resubmission, conflicting resubmission
    body = {"decision": "drop", "caption": "a better caption", "tags": ["dog"], "reasons": ["other"]}
    r1 = alice.post(f"/api/items/{a['id']}/decision", json=body)
    r2 = alice.post(f"/api/items/{a['id']}/decision", json=body)
    assert r1.status_code == r2.status_code == 200 and r2.json()["duplicate"] is True
    assert alice.post(f"/api/items/{a['id']}/decision", json={**body, "decision": "keep"}).status_code == 409
    assert db.counters()["decisions"] == 1
    assert admin.get(f"/api/items/{a['id']}").json()["item"]["done_count"] == 1
    export = admin.get("/admin/export.jsonl").text.strip().splitlines()
    assert [json.loads(x)["caption"] for x in export] == ["a better caption"]


def test_bad_requests_get_4xx_never_500(env):
    app, _, _ = env
    alice = login(app, "alice")
    it = alice.get("/api/next").json()["item"]
    url = f"/api/items/{it['id']}/decision"
    h = {"content-type": "application/json"}
    cases = [
        alice.post(url, content=b"{not json", headers=h),
        alice.post(url, content=b"[]", headers=h),
        alice.post(url, json={"decision": "maybe"}),
        alice.post(url, json={"decision": "keep", "extra": 1}),
        alice.post(url, json={"decision": "keep", "tags": "notalist"}),
        alice.post(url, json={"decision": "keep", "tags": ["x" * 65]}),
        alice.post(url, content=b"\xff\xfe\x00garbage", headers=h),
        alice.post("/api/items/99999999999999999999999/decision", json={"decision": "keep"}),
        alice.post("/api/items/-1/decision", json={"decision": "keep"}),
        alice.post("/api/items/abc/decision", json={"decision": "keep"}),
        alice.post(url, content=b"x" * 20_000, headers=h),
        alice.post(url, content=(b"x" * 1000 for _ in range(40)), headers=h),  # chunked, no length
        alice.post("/api/items/424242/decision", json={"decision": "keep"}),
        alice.get("/image/..%2F..%2Fetc%2Fpasswd"),
        alice.get("/image/" + "a" * 500),
        alice.post(f"/annotate/{it['id']}", data={"action": "explode", "csrf": alice.headers["x-csrf-token"]}),
        alice.post("/login", data={"username": "x"}),
        # NUL characters: PostgreSQL cannot store them, so both engines refuse them the same way
        alice.post(url, json={"decision": "keep", "caption": "a\x00b"}),
        alice.post(url, json={"decision": "keep", "tags": ["a\x00"]}),
        alice.post("/api/login", json={"username": "al\x00ice", "password": PASSWORD}),
    ]
    codes = [r.status_code for r in cases]
    assert all(400 <= c < 500 for c in codes), codes
    assert codes[10] == 413 and codes[11] == 413 and codes[12] == 404
    assert codes[-3:] == [422, 422, 422]
    assert codes[0] == 422  # malformed JSON
    deep = alice.post(url, content=b"[" * 10_000, headers=h)  # nested past the parser: malformed too, not a bare 400
    assert deep.status_code == 422 and "not JSON this server reads" in deep.text, deep.text


def test_images_by_row_id_only_for_your_items(env):
    app, db, rows = env
    alice, bob, admin = login(app, "alice"), login(app, "bob"), login(app, "admin")
    a = alice.get("/api/next").json()["item"]
    r = alice.get(f"/image/{a['row_id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == next(x["image"] for x in rows if x["id"] == a["row_id"])
    nb = a["neighbours"][0]["row_id"]
    assert alice.get(f"/image/{nb}").status_code == 200  # look-alikes of your item
    assert bob.get(f"/image/{a['row_id']}").status_code == 403  # not bob's item
    assert admin.get(f"/image/{rows[3]['id']}").status_code == 200


def test_xss_caption_is_escaped_on_the_page(env):
    app, db, rows = env
    bob = login(app, "bob")
    alice = login(app, "alice")
    alice.get("/api/next")  # alice holds the first item, so bob gets the XSS row
    html = bob.get("/").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<script>alert" not in html and 'onerror="alert' not in html
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js" defer>']


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # apply on PostgreSQL: test_loop_apply.py
def test_admin_applies_decisions_from_the_page(env, ray_session):
    app, db, rows = env
    alice, admin = login(app, "alice"), login(app, "admin")
    it = alice.get("/api/next").json()["item"]
    assert alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "caption": "<b>a cat</b> on a mat"}).status_code == 200
    page = admin.get("/admin").text
    assert 'id="apply-button"' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    # annotators cannot apply, nor can a forged form (no or wrong CSRF token)
    assert alice.post("/admin/apply", data={"csrf": alice.headers["x-csrf-token"]}).status_code == 403
    assert admin.post("/admin/apply", data={"csrf": "forged"}).status_code == 403
    assert admin.post("/admin/apply").status_code == 422
    before = lance.dataset(db.get_meta("dataset")).version
    r = admin.post("/admin/apply", data={"csrf": csrf})
    assert r.status_code == 200, r.text[-2000:]
    ds = lance.dataset(db.get_meta("dataset"))
    assert ds.version == before + 1
    assert f'v<span id="apply-version">{ds.version}</span>' in r.text and 'id="apply-captions">1<' in r.text
    t = ds.to_table(columns=["id", "rev_caption", "rev_decision", "rev_reviewer"], filter=f"id = '{it['row_id']}'")
    assert t.to_pylist() == [{"id": it["row_id"], "rev_caption": "<b>a cat</b> on a mat", "rev_decision": "keep", "rev_reviewer": "alice"}]
    assert [a for a in db.audit_tail(5) if a["action"] == "apply"][0]["user"] == "admin"
    # applied: the decision can no longer be re-opened from the history (issue #16)
    assert db.applied_through() == db.decisions()[-1]["decision_id"]
    assert 'id="applied-note"' in alice.get(f"/history/{it['id']}").text
    assert alice.post(f"/api/items/{it['id']}/reopen").status_code == 409


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_captions_as_long_as_ingest_keeps_can_be_reviewed(env):
    """Ingest keeps captions up to MAX_CAPTION_CHARS; the form and the API take them (a shorter
    limit here would leave such items stuck: every action refused)."""
    from curation.text import MAX_CAPTION_CHARS

    _, db, _ = env
    app = create_app(AppSettings(db_url=db.url), db)  # default body limit
    alice = login(app, "alice")
    a = alice.get("/api/next").json()["item"]
    page = alice.get("/").text
    assert f'maxlength="{MAX_CAPTION_CHARS}"' in page
    long_cap = "ü" * MAX_CAPTION_CHARS  # multi-byte, percent-encoded in the form: ~6 bytes a character
    r = alice.post(
        f"/annotate/{a['id']}",
        data={"action": "accept", "csrf": alice.headers["x-csrf-token"], "caption": long_cap},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert db.decisions()[-1]["caption"] == long_cap
    b = alice.get("/api/next").json()["item"]
    assert (
        alice.post(f"/api/items/{b['id']}/decision", json={"decision": "keep", "caption": "x" * (MAX_CAPTION_CHARS + 1)}).status_code == 422
    )
    assert alice.post(f"/api/items/{b['id']}/decision", json={"decision": "keep", "caption": "x" * MAX_CAPTION_CHARS}).status_code == 200


def test_bad_json_gets_a_422_that_echoes_nothing_and_a_bug_a_500_with_the_security_headers(env):
    """A lone surrogate ("\\ud800", valid JSON text) answered 500 before login (the default 422
    handler echoed the input and could not encode it); a mistyped password came back in the
    body; and a 500 lacked the security headers."""
    app, db, rows = env
    c = TestClient(app, raise_server_exceptions=False)
    for body in (b'{"username":"\\ud800","password":"x"}', b'{"username":"\\udc80\\ud800","password":5}', b'{"\\ud800":1}'):
        r = c.post("/api/login", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.headers["x-frame-options"] == "DENY", (body, r.status_code, r.text)
        assert all(set(e) == {"type", "loc", "msg"} for e in r.json()["detail"])
    r = c.post("/api/login", json={"username": "alice", "password": ["secret-guess"]})
    assert r.status_code == 422 and "secret-guess" not in r.text

    @app.get("/api/_boom")
    def boom():
        raise RuntimeError("a bug")

    r = c.get("/api/_boom")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert r.headers["content-security-policy"].startswith("default-src 'none'") and r.headers["x-content-type-options"] == "nosniff"


def test_login_throttling_answers_429_with_retry_after_and_spares_others(env):
    """80 wrong passwords then the right one: refused with 429 and Retry-After (the JSON login
    and the form alike), while another account from another address logs in; 16 parallel bad
    logins run at most ``login_max_failures`` password hashes (the rest never reach scrypt)."""
    from concurrent.futures import ThreadPoolExecutor

    _, db, _ = env
    app = create_app(AppSettings(db_url=db.url, login_max_failures=5, login_lockout_s=60), db)
    mallory = TestClient(app, client=("10.6.6.6", 4000))
    codes = [mallory.post("/api/login", json={"username": "alice", "password": f"guess {i}"}).status_code for i in range(80)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    r = mallory.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60 and "rev_session" not in r.cookies
    form = mallory.get("/login")
    tok = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    page = mallory.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": tok}, follow_redirects=False)
    assert page.status_code == 429 and "Too many failed logins" in page.text and page.headers["retry-after"]
    # the same answer for a name that has no account (no enumeration through the throttle)
    ghost = [mallory.post("/api/login", json={"username": "ghost", "password": "x"}) for _ in range(6)]
    assert [g.status_code for g in ghost] == [401] * 5 + [429] and ghost[-1].json() == r.json()
    other = TestClient(app, client=("10.7.7.7", 4000))
    assert other.post("/api/login", json={"username": "bob", "password": PASSWORD}).status_code == 200
    assert any(a["action"] == "login_lockout" for a in db.audit_tail(200))

    def bad(_):
        c = TestClient(app, client=("10.8.8.8", 4000))
        return c.post("/api/login", json={"username": "bob", "password": "wrong-wrong"}).status_code

    with ThreadPoolExecutor(16) as pool:
        par = list(pool.map(bad, range(16)))
    assert par.count(401) <= 5 and par.count(429) >= 11, par


def test_a_refused_form_post_is_a_readable_page_that_keeps_the_caption(env):
    """Browsers (Accept: text/html) get a page with the caption as typed when a form post is
    refused (lease lost, form expired); scripts keep the JSON answers."""
    app, db, rows = env
    alice = login(app, "alice")
    it = alice.get("/api/next").json()["item"]
    html = {"accept": "text/html"}
    form = {"action": "accept", "csrf": "stale-token", "caption": "<b>my</b> edit"}
    r = alice.post(f"/annotate/{it['id']}", data=form, headers=html)
    assert r.status_code == 403 and "text/html" in r.headers["content-type"]
    assert "not saved" in r.text and "&lt;b&gt;my&lt;/b&gt; edit</textarea>" in r.text
    db.release_user(db.session(alice.cookies["rev_session"])[0])  # the lease is gone
    r = alice.post(f"/annotate/{it['id']}", data={**form, "csrf": alice.headers["x-csrf-token"]}, headers=html)
    assert r.status_code == 403 and "lease on this item ran out" in r.text and "my&lt;/b&gt; edit" in r.text
    assert alice.post(f"/annotate/{it['id']}", data={**form, "csrf": alice.headers["x-csrf-token"]}).json()["error"] == "NotLeased"
    assert db.counters()["decisions"] == 0


def _form_csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_undo_by_api_and_form_gives_the_item_back_and_needs_csrf(env):
    """Undo (issue #16): the JSON call and the page's form take back the latest decision, the
    item comes back to the same annotator; without the CSRF token, for another's decision, or
    for an older one it is refused (403, 404, 409), never a 500."""
    app, db, rows = env
    alice, bob = login(app, "alice"), login(app, "bob")
    a = alice.get("/api/next").json()["item"]
    assert alice.post(f"/api/items/{a['id']}/decision", json={"decision": "drop", "flag": True}).status_code == 200
    assert alice.get("/api/next").json()["item"]["id"] != a["id"]
    no_csrf = TestClient(app, cookies=dict(alice.cookies))
    assert no_csrf.post(f"/api/items/{a['id']}/undo").status_code == 403
    assert bob.post(f"/api/items/{a['id']}/undo").status_code == 404  # not bob's decision
    r = alice.post(f"/api/items/{a['id']}/undo")
    assert r.status_code == 200 and r.json() == {"item_id": a["id"], "undone": "drop", "flag": True}
    assert db.counters()["decisions"] == 0 and db.counters()["flag"] == 0
    assert alice.get("/api/next").json()["item"]["id"] == a["id"]
    assert alice.post(f"/api/items/{a['id']}/undo").status_code == 404
    # the page: decide with the form, the next page confirms it and offers the undo button
    page = alice.get("/")
    r = alice.post(f"/annotate/{a['id']}", data={"action": "accept", "csrf": _form_csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/?saved={a['id']}"
    page = alice.get(r.headers["location"])
    assert f"saved: keep #{a['id']}</p>" in page.text and 'aria-live="polite"' in page.text
    assert f'action="/annotate/{a["id"]}/undo"' in page.text
    assert alice.post(f"/annotate/{a['id']}/undo", data={"csrf": "forged"}).status_code == 403
    assert alice.post(f"/annotate/{a['id']}/undo", data={}).status_code == 422
    r = alice.post(f"/annotate/{a['id']}/undo", data={"csrf": _form_csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/?undone={a['id']}"
    page = alice.get(r.headers["location"])
    assert f'data-item="{a["id"]}"' in page.text and f"undone: #{a['id']}" in page.text
    # another user's item id in ?saved= shows nothing of theirs
    b = bob.get("/api/next").json()["item"]
    bob.post(f"/api/items/{b['id']}/decision", json={"decision": "drop"})
    assert "saved:" not in alice.get(f"/?saved={b['id']}").text
    assert alice.get("/?saved=0").status_code == 422 and alice.get("/?saved=abc").status_code == 422
    assert [x["action"] for x in db.audit_page(action="undo")[0]] == ["undo", "undo"]


def test_history_lists_only_your_own_decisions_with_pages(env, monkeypatch):
    """/history: your decisions, newest first, paginated, thumbnails served; another
    annotator's item is never shown (list, item page, image), whatever the id in the URL."""
    from annotator_ui.routes import history

    app, db, rows = env
    monkeypatch.setattr(history, "PAGE_SIZE", 2)
    alice, bob = login(app, "alice"), login(app, "bob")
    mine = []
    for cap in ("first <b>edit</b>", None, "third"):
        it = alice.get("/api/next").json()["item"]
        alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "caption": cap})
        mine.append(it)
    theirs = bob.get("/api/next").json()["item"]
    bob.post(f"/api/items/{theirs['id']}/decision", json={"decision": "drop", "caption": "bob's secret"})
    p1 = alice.get("/history")
    assert p1.status_code == 200 and "3 decisions" in p1.text
    assert re.findall(r'<tr data-item="(\d+)">', p1.text) == [str(mine[2]["id"]), str(mine[1]["id"])]
    assert 'href="/history?page=2"' in p1.text and "bob's secret" not in p1.text
    p2 = alice.get("/history?page=2")
    assert re.findall(r'<tr data-item="(\d+)">', p2.text) == [str(mine[0]["id"])]
    assert "first &lt;b&gt;edit&lt;/b&gt;" in p2.text and "<b>edit" not in p2.text
    assert alice.get(f"/image/{mine[0]['row_id']}").status_code == 200  # decided: its thumbnail shows
    assert alice.get(f"/image/{theirs['row_id']}").status_code == 403
    one = alice.get(f"/history/{mine[2]['id']}")
    assert one.status_code == 200 and 'id="hist-decision" class="keep">keep' in one.text and 'id="undo-form"' in one.text
    assert 'id="undo-form"' not in alice.get(f"/history/{mine[0]['id']}").text  # not the latest
    assert alice.get(f"/history/{theirs['id']}").status_code == 404  # bob's: as if it did not exist
    assert "bob's secret" not in alice.get(f"/history/{theirs['id']}", headers={"accept": "text/html"}).text
    assert [alice.get(u).status_code for u in ("/history?page=0", "/history?page=x", "/history/0", "/history/abc")] == [422] * 4
    assert TestClient(app).get("/history").status_code == 401


def test_audit_page_shows_local_times_and_escaped_details_with_filters(env):
    app, db, rows = env
    alice, admin = login(app, "alice"), login(app, "admin")
    assert alice.get("/admin/audit").status_code == 403
    db.log(None, "note", detail='<script>alert("x")</script>', n=3)
    r = admin.get("/admin/audit")
    assert r.status_code == 200
    assert "<dt>detail</dt><dd>&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;</dd>" in r.text and "<script>alert" not in r.text
    assert "<dt>n</dt><dd>3</dd>" in r.text and '{"detail"' not in r.text
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d">', r.text)
    f = admin.get("/admin/audit", params={"user": "alice", "action": "login"})
    assert f.status_code == 200 and "1 entries matching" in f.text
    assert set(re.findall(r"</time></td><td>([^<]*)</td><td>([^<]*)</td>", f.text)) == {("alice", "login")}
    for i in range(120):
        db.log(None, "bulk", i=i)
    p1, p2 = admin.get("/admin/audit?action=bulk"), admin.get("/admin/audit?action=bulk&page=2")
    assert p1.text.count("<dt>i</dt>") == 100 and p2.text.count("<dt>i</dt>") == 20
    assert "page=2" in p1.text and "<dt>i</dt><dd>119</dd>" in p1.text and "<dt>i</dt><dd>0</dd>" in p2.text
    bad = [admin.get("/admin/audit", params=p).status_code for p in ({"page": 0}, {"user": "a\x00"}, {"action": "x" * 65})]
    assert bad == [422, 422, 422]
    assert admin.get("/admin/audit", params={"user": "' OR 1=1 --"}).status_code == 200


def test_invisible_characters_show_as_markers_and_the_editor_warns(env):
    """A bidi override in a caption reversed what the annotator saw, unseen: the page shows a
    marker per invisible character (the text stays escaped) and warns that saving removes them."""
    from annotator_ui.filters import INVISIBLE_NAMES
    from curation.text import strip_invisible

    assert strip_invisible("".join(INVISIBLE_NAMES)) == ("", len(INVISIBLE_NAMES))  # the server strips exactly these
    app, db, rows = env
    with db.tx() as t:
        raw = t.one("SELECT payload FROM items WHERE row_id = ?", (rows[0]["id"],))[0]
        p = json.loads(raw)
        p["caption"] = "a cat \u202egpj.exe\u202c <i>on</i> a so\u200bfa"
        t.exec("UPDATE items SET payload = ? WHERE row_id = ?", (json.dumps(p), rows[0]["id"]))
    alice = login(app, "alice")
    html = alice.get("/").text
    assert 'id="invisible-warning">' in html and 'id="invisible-count">3<' in html
    shown = re.search(r'id="caption-shown">(.*?)</p>', html, re.S).group(1)
    assert "\u27e8RLO\u27e9</span>gpj.exe" in shown and "\u27e8ZWSP\u27e9" in shown and "&lt;i&gt;on&lt;/i&gt;" in shown
    assert "\u202e" not in shown
    second = login(app, "bob").get("/").text  # a caption without any: no warning, no preview
    assert 'id="invisible-warning" hidden>' in second and 'id="caption-shown" hidden>' in second


def _make_gold(db, row_id: str, answer: str) -> int:
    """Turn a queued, undecided row into a gold (check) item, as ``mine --gold`` does."""
    with db.tx(write=False) as t:
        item_id, payload = t.one("SELECT id, payload FROM items WHERE row_id = ?", (row_id,))
    res = db.enqueue([{"row_id": row_id, "priority": 100.0, "payload": json.loads(payload), "gold_answer": answer}], "gold")
    assert res["gold"] == 1
    return item_id


def test_gold_feedback_only_when_turned_on_and_gold_accuracy_per_annotator(env):
    """Issue #16: after a decision on a check item the annotator is told the expected answer,
    only when the admin turned ``gold_feedback`` on (off by default, and then nothing says
    gold); an answer seen cannot be undone; the admin page counts decisions on gold items
    against their answers, per annotator."""
    app, db, rows = env
    gold_id = _make_gold(db, rows[3]["id"], "keep")
    on = create_app(AppSettings(db_url=db.url, gold_rate=1.0, gold_feedback=True), db)
    off = create_app(AppSettings(db_url=db.url, gold_rate=1.0), db)
    alice, bob = login(off, "alice"), login(on, "bob")
    assert alice.get("/api/next").json()["item"]["id"] == gold_id
    r = alice.post(f"/api/items/{gold_id}/decision", json={"decision": "keep"})
    assert r.status_code == 200 and "expected" not in r.json() and "correct" not in r.json()
    page = alice.get(f"/?saved={gold_id}").text
    assert f"saved: keep #{gold_id}" in page and "check item" not in page and 'id="gold-feedback"' not in page
    assert bob.get("/api/next").json()["item"]["id"] == gold_id  # gold stays for every annotator
    assert "check item" not in bob.get(f"/?saved={gold_id}").text  # not decided by bob: nothing
    r = bob.post(f"/api/items/{gold_id}/decision", json={"decision": "drop"})
    assert r.status_code == 200 and r.json()["expected"] == "keep" and r.json()["correct"] is False
    page = bob.get(f"/?saved={gold_id}").text
    assert 'class="wrong"> &middot; this was a check item; the expected answer was keep</span>' in page
    assert 'id="undo-form"' not in page
    assert bob.post(f"/api/items/{gold_id}/undo").status_code == 409  # the answer was seen
    assert bob.post(f"/annotate/{gold_id}/undo", data={"csrf": _form_csrf(page)}).status_code == 409
    normal = bob.get("/api/next").json()["item"]
    r = bob.post(f"/api/items/{normal['id']}/decision", json={"decision": "keep"})
    assert "expected" not in r.json() and "check item" not in bob.get(f"/?saved={normal['id']}").text
    admin = login(app, "admin")
    stats = {a["user"]: a for a in admin.get("/api/admin/stats").json()["annotators"]}
    assert (stats["alice"]["gold_seen"], stats["alice"]["gold_correct"], stats["alice"]["gold_accuracy"]) == (1, 1, 1.0)
    assert (stats["bob"]["gold_seen"], stats["bob"]["gold_correct"], stats["bob"]["gold_accuracy"]) == (1, 0, 0.0)
    html = admin.get("/admin").text
    assert re.search(r"<td>alice</td>.*?<td>1</td>\s*<td>100%</td>", html, re.S)
    assert re.search(r"<td>bob</td>.*?<td>1</td>\s*<td>0%</td>", html, re.S)


def _graph_dir(tmp_path) -> str:
    """A concept graph folder with just the nodes file the tag suggestions read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    nodes = {"id": ["wn:02121620", "wn:02084071", "wn:03001627"], "label_en": ["cat", "dog", "chair"], "label_zh": ["猫", "狗", ""]}
    d = tmp_path / "graph"
    d.mkdir()
    pq.write_table(pa.table(nodes), d / "nodes.parquet")
    return str(d)


def test_tag_suggestions_from_the_queue_and_the_graph(env, tmp_path):
    """Issue #16: the tag field suggests concepts by English or Chinese label, from the labels in
    the queue's payloads and the server's graph; ids come back to be stored. Needs a session;
    bad input is 4xx."""
    app, db, rows = env
    with db.tx() as t:
        p = json.loads(t.one("SELECT payload FROM items WHERE row_id = ?", (rows[0]["id"],))[0])
        p["tag_labels"] = {"wn:02121163": {"en": "domestic cat", "zh": "家猫"}, "wn:04256520": {"en": "sofa", "zh": "沙发"}}
        t.exec("UPDATE items SET payload = ? WHERE row_id = ?", (json.dumps(p), rows[0]["id"]))
    assert set(db.tag_labels()) == {"wn:02121163", "wn:04256520"}
    served = create_app(AppSettings(db_url=db.url, graph=_graph_dir(tmp_path)), db)
    alice = login(served, "alice")
    r = alice.get("/api/tags", params={"q": "Ca"})
    assert r.status_code == 200 and r.json()["tags"][0] == {"id": "wn:02121620", "en": "cat", "zh": "猫"}
    assert {"id": "wn:02121163", "en": "domestic cat", "zh": "家猫"} in r.json()["tags"]  # a word of the label
    assert alice.get("/api/tags", params={"q": "沙"}).json()["tags"] == [{"id": "wn:04256520", "en": "sofa", "zh": "沙发"}]
    assert [t["id"] for t in alice.get("/api/tags", params={"q": "wn:0300"}).json()["tags"]] == ["wn:03001627"]
    assert len(alice.get("/api/tags", params={"q": "c", "limit": 1}).json()["tags"]) == 1
    assert alice.get("/api/tags", params={"q": "zebra"}).json() == {"tags": []}
    # without a graph only the queue's labels; without a session 401; bad input 422
    assert [t["id"] for t in login(app, "alice").get("/api/tags", params={"q": "ca"}).json()["tags"]] == ["wn:02121163"]
    assert TestClient(served).get("/api/tags", params={"q": "ca"}).status_code == 401
    bad = [{}, {"q": ""}, {"q": "x" * 65}, {"q": "a\x00"}, {"q": "a", "limit": 0}, {"q": "a", "limit": 51}, {"q": "a", "limit": "x"}]
    assert [alice.get("/api/tags", params=b).status_code for b in bad] == [422] * len(bad)


def test_decision_tags_must_be_concepts_of_the_graph_and_are_stored_as_ids(env, tmp_path):
    """Audit: a tag that was no concept of the dataset's graph (a typo, a free word) was stored,
    then did nothing when the decisions were applied. With a graph, the API and the form take a
    concept id or a concept's exact English or Chinese name (any case) and store the id; an
    unknown tag is a 422 that names it and offers close concepts, and nothing is stored. The
    item's own proposed tags pass as they are; the history names the tags picked."""
    app, db, rows = env
    served = create_app(AppSettings(db_url=db.url, graph=_graph_dir(tmp_path)), db)
    alice = login(served, "alice")
    it = alice.get("/api/next").json()["item"]
    url = f"/api/items/{it['id']}/decision"
    r = alice.post(url, json={"decision": "keep", "tags": ["cat", "dgo"]})
    assert r.status_code == 422 and r.json()["error"] == "UnknownTags", r.text
    assert "unknown tag 'dgo': not a concept of the concept graph; close concepts: dog (wn:02084071)" in r.json()["detail"]
    assert r.json()["tags"] == [{"tag": "dgo", "reason": "unknown", "concepts": [{"id": "wn:02084071", "en": "dog", "zh": "狗"}]}]
    r = alice.post(url, json={"decision": "keep", "tags": ["zebra", "chai"]})
    assert [(p["tag"], [c["id"] for c in p["concepts"]]) for p in r.json()["tags"]] == [("zebra", []), ("chai", ["wn:03001627"])]
    assert db.decisions() == [] and db.counters()["decisions"] == 0
    r = alice.post(url, json={"decision": "keep", "tags": ["Dog", "猫", "wn:03001627", " CHAIR ", "狗"]})
    assert r.status_code == 200, r.text
    assert db.decisions()[-1]["tags"] == ["wn:02084071", "wn:02121620", "wn:03001627"]  # ids, in order, once each
    assert alice.post(url, json={"decision": "keep", "tags": ["wn:02084071", "wn:02121620", "wn:03001627"]}).json()["duplicate"]
    page = alice.get(f"/history/{it['id']}").text  # names from the graph: the payload has none for them
    assert (
        'title="wn:03001627" data-id="wn:03001627">chair</span>' in page and 'data-id="wn:02084071">dog <span lang="zh">狗</span>' in page
    )

    # the form: a page that says which tag, keeps the caption and the tags as typed; then saved as ids
    it = alice.get("/api/next").json()["item"]
    html = {"accept": "text/html"}
    form = {"action": "accept", "csrf": alice.headers["x-csrf-token"], "caption": "my edit", "tags": "cat, 狗, doge"}
    r = alice.post(f"/annotate/{it['id']}", data=form, headers=html)
    assert r.status_code == 422 and "text/html" in r.headers["content-type"], r.text[-800:]
    assert "Unknown tags" in r.text and "unknown tag &#39;doge&#39;" in r.text and "dog (wn:02084071)" in r.text
    assert 'id="kept-tags" value="cat, 狗, doge"' in r.text and "my edit</textarea>" in r.text
    assert alice.post(f"/annotate/{it['id']}", data=form).json()["error"] == "UnknownTags"  # scripts: JSON
    assert db.counters()["decisions"] == 1
    r = alice.post(f"/annotate/{it['id']}", data={**form, "tags": "cat, 狗"}, follow_redirects=False)
    assert r.status_code == 303 and db.decisions()[-1]["tags"] == ["wn:02121620", "wn:02084071"]

    # the item's own proposal (a caption keyword mined without a graph) is accepted as it is
    it = alice.get("/api/next").json()["item"]
    with db.tx() as t:
        p = json.loads(t.one("SELECT payload FROM items WHERE id = ?", (it["id"],))[0])
        p["pseudo"] = {"decision": "keep", "tags": ["sofa", "cat"]}
        t.exec("UPDATE items SET payload = ? WHERE id = ?", (json.dumps(p), it["id"]))
    assert alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "tags": ["sofa", "pillow"]}).status_code == 422
    assert alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "tags": ["sofa", "cat"]}).status_code == 200
    assert db.decisions()[-1]["tags"] == ["sofa", "wn:02121620"]

    # without a graph the server cannot tell a concept from a typo: tags are stored as given
    bob = login(app, "bob")
    it = bob.get("/api/next").json()["item"]
    assert bob.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "tags": ["dgo"]}).status_code == 200
    assert db.decisions()[-1]["tags"] == ["dgo"]


def test_invisible_characters_are_stripped_by_default_or_rejected_by_setting(env):
    """Issue #16: a caption with a bidi override or a zero-width space is saved without them (the
    default), or, with ``invisible="reject"``, refused with a 422 that names each character (a
    page that keeps the caption for a browser's form post); nothing is saved then."""
    app, db, rows = env
    bad = "a cat \u202egpj.exe\u202c on a so\u200bfa"
    alice = login(app, "alice")
    it = alice.get("/api/next").json()["item"]
    assert alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "caption": bad}).status_code == 200
    assert db.decisions()[-1]["caption"] == "a cat gpj.exe on a sofa"
    strict = create_app(AppSettings(db_url=db.url, invisible="reject"), db)
    bob = login(strict, "bob")
    it = bob.get("/api/next").json()["item"]
    r = bob.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "caption": bad})
    assert r.status_code == 422 and r.json()["error"] == "InvisibleRejected"
    assert r.json()["detail"] == (
        "the caption has invisible characters: U+200B (ZWSP), U+202C (PDF), U+202E (RLO); remove them and save again"
    )
    page = bob.get("/").text
    assert "an edited caption with any is refused" in page
    form = {"action": "accept", "csrf": _form_csrf(page), "caption": bad}
    r = bob.post(f"/annotate/{it['id']}", data=form, headers={"accept": "text/html"})
    assert r.status_code == 422 and "text/html" in r.headers["content-type"]
    assert "U+202E (RLO)" in r.text and "not saved" in r.text and "gpj.exe" in r.text
    assert bob.post(f"/annotate/{it['id']}", data=form).json()["error"] == "InvisibleRejected"
    assert len(db.decisions()) == 1  # nothing of bob's saved
    r = bob.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "caption": "a cat on a sofa \u200d\u200e"})
    assert r.status_code == 200 and db.decisions()[-1]["caption"] == "a cat on a sofa \u200d\u200e"  # ZWJ and LRM are not refused
    with pytest.raises(ValidationError):
        AppSettings(db_url=db.url, invisible="ignore")


def test_reopen_from_history_until_applied_needs_csrf_and_is_yours_only(env):
    """Issue #16: /history/{id} offers re-opening any of your decisions that no apply has
    merged (not only the latest, however old); the form and the JSON call need the CSRF token,
    another's item is 404, an applied decision 409; the item comes back to you; audited."""
    app, db, rows = env
    alice, bob = login(app, "alice"), login(app, "bob")
    done = []
    for _ in range(2):
        it = alice.get("/api/next").json()["item"]
        alice.post(f"/api/items/{it['id']}/decision", json={"decision": "drop", "caption": "mine"})
        done.append(it)
    theirs = bob.get("/api/next").json()["item"]
    bob.post(f"/api/items/{theirs['id']}/decision", json={"decision": "keep"})
    old = alice.get(f"/history/{done[0]['id']}").text  # not the latest: no undo, but re-open
    assert 'id="undo-form"' not in old and f'action="/history/{done[0]["id"]}/reopen"' in old
    assert 'id="reopen-form"' not in alice.get(f"/history/{done[1]['id']}").text  # the latest: undo offered instead
    no_csrf = TestClient(app, cookies=dict(alice.cookies))
    assert no_csrf.post(f"/api/items/{done[0]['id']}/reopen").status_code == 403
    assert alice.post(f"/history/{done[0]['id']}/reopen", data={"csrf": "forged"}).status_code == 403
    assert alice.post(f"/history/{done[0]['id']}/reopen", data={}).status_code == 422
    assert alice.post(f"/api/items/{theirs['id']}/reopen").status_code == 404  # bob's: not yours
    assert alice.post("/api/items/0/reopen").status_code == 422
    r = alice.post(f"/history/{done[0]['id']}/reopen", data={"csrf": _form_csrf(old)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/?undone={done[0]['id']}"
    assert f'data-item="{done[0]["id"]}"' in alice.get(r.headers["location"]).text  # back to alice
    assert db.counters()["decisions"] == 2 and [a["action"] for a in db.audit_page(action="reopen")[0]] == ["reopen"]
    assert alice.post(f"/api/items/{done[0]['id']}/reopen").status_code == 404  # nothing left to re-open
    alice.post(f"/api/items/{done[0]['id']}/decision", json={"decision": "keep"})
    db.mark_applied(None, max(d["decision_id"] for d in db.decisions()))  # what an apply records
    page = alice.get(f"/history/{done[1]['id']}").text
    assert 'id="reopen-form"' not in page and 'id="applied-note"' in page
    assert alice.post(f"/api/items/{done[1]['id']}/reopen").status_code == 409


def test_history_shows_tag_names_not_ids(env):
    """Issue #20: one's own decision lists its tags by English and Chinese name, the id kept in the
    title; a tag the item's payload has no name for shows its id."""
    app, db, rows = env
    alice = login(app, "alice")
    it = alice.get("/api/next").json()["item"]
    with db.tx() as t:
        p = json.loads(t.one("SELECT payload FROM items WHERE id = ?", (it["id"],))[0])
        p["tag_labels"] = {"wn:02121163": {"en": "domestic cat", "zh": "家猫"}}
        t.exec("UPDATE items SET payload = ? WHERE id = ?", (json.dumps(p), it["id"]))
    r = alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep", "tags": ["wn:02121163", "wn:04256520"]})
    assert r.status_code == 200, r.text
    page = alice.get(f"/history/{it['id']}").text
    assert 'title="wn:02121163" data-id="wn:02121163">domestic cat <span lang="zh">家猫</span>' in page
    assert 'data-id="wn:04256520">wn:04256520</span>' in page  # no name in the payload: the id


# --- the review audit (/work/audit/review.md) ------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"action": "accept", "caption": "a\x00b"}, {"action": "accept", "tags": "wn:1, a\x00b"}, {"action": "reject", "reasons": ["a\x00b"]}],
    ids=["caption", "tags", "reasons"],
)
def test_a_form_post_with_a_nul_character_is_a_422_that_keeps_the_caption(env, fields):
    """Audit #2: a NUL in the form's caption, tags or reasons answered 500 (a pydantic error
    raised in the handler) and dropped the connection; the JSON API already answered 422. A
    browser now gets the refusal as a page with the caption as typed, scripts 422 JSON."""
    app, db, rows = env
    alice = login(app, "alice")
    it = alice.get("/api/next").json()["item"]
    form = {"csrf": alice.headers["x-csrf-token"], "caption": "my <i>edit</i>", **fields}
    r = alice.post(f"/annotate/{it['id']}", data=form, headers={"accept": "text/html"})
    assert r.status_code == 422 and "text/html" in r.headers["content-type"], r.text[-500:]
    assert "not saved" in r.text and "NUL character" in r.text
    kept = re.search(r'<textarea id="kept-caption"[^>]*>(.*?)</textarea>', r.text, re.S).group(1)
    assert kept == (form["caption"].replace("<", "&lt;").replace(">", "&gt;"))
    r = alice.post(f"/annotate/{it['id']}", data=form)
    assert r.status_code == 422 and r.json()["error"] == "FormRejected" and "NUL" in r.json()["detail"]
    assert db.counters()["decisions"] == 0
    clean = {"csrf": form["csrf"], "action": fields["action"]}
    assert alice.post(f"/annotate/{it['id']}", data=clean, follow_redirects=False).status_code == 303


def test_undo_is_neither_offered_nor_allowed_once_an_apply_merged_the_decision(env):
    """Audit #5: within the undo window, the page and the history offered undo of a decision
    `review apply` had merged, and undo took it back (re-open answered 409)."""
    app, db, rows = env
    alice = login(app, "alice")
    it = alice.get("/api/next").json()["item"]
    alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep"})
    assert 'id="undo-form"' in alice.get("/").text  # before the apply: offered
    db.mark_applied(None, db.decisions()[-1]["decision_id"])  # what an apply records
    assert 'id="undo-form"' not in alice.get("/").text
    page = alice.get(f"/history/{it['id']}").text
    assert 'id="undo-form"' not in page and 'id="applied-note"' in page
    csrf = alice.headers["x-csrf-token"]
    r = alice.post(f"/annotate/{it['id']}/undo", data={"csrf": csrf}, headers={"accept": "text/html"})
    assert r.status_code == 409 and "already applied" in r.text
    assert alice.post(f"/api/items/{it['id']}/undo").status_code == 409
    assert alice.post(f"/api/items/{it['id']}/reopen").status_code == 409
    assert len(db.decisions()) == 1 and db.counters()["decisions"] == 1


def test_a_409_page_is_headed_by_what_was_refused(env):
    """Audit #14: a second "Apply decisions" click while one runs got a 409 page headed
    "Already decided" (the heading of the decision layer's conflicts, still a page)."""
    app, db, rows = env
    admin, alice = login(app, "admin"), login(app, "alice")
    html = {"accept": "text/html"}
    assert app.state.apply_lock.acquire(blocking=False)  # an apply running
    try:
        r = admin.post("/admin/apply", data={"csrf": admin.headers["x-csrf-token"]}, headers=html)
    finally:
        app.state.apply_lock.release()
    assert r.status_code == 409 and "an apply is already running" in r.text
    heading = re.search(r"<h1>(.*?)</h1>", r.text).group(1)
    assert heading == "Not possible now"
    it = alice.get("/api/next").json()["item"]
    alice.post(f"/api/items/{it['id']}/decision", json={"decision": "keep"})
    alice.post(f"/api/items/{alice.get('/api/next').json()['item']['id']}/decision", json={"decision": "keep"})
    r = alice.post(f"/annotate/{it['id']}/undo", data={"csrf": alice.headers["x-csrf-token"]}, headers=html)
    assert r.status_code == 409 and "only your latest decision" in r.text


def test_a_browser_without_a_session_gets_the_login_form_and_scripts_a_401(env):
    """Audit #14: a page asked for without a session showed "Please log in." and a link, one more
    click each morning; docs/review.md says browsers get the login page. The form is there now
    (still 401: scripts and the API description see the same status), and it logs in."""
    app, db, rows = env
    c = TestClient(app)
    for path in ("/", "/history", "/admin"):
        r = c.get(path, headers={"accept": "text/html,application/xhtml+xml"})
        assert r.status_code == 401 and 'id="login-form"' in r.text and 'id="username"' in r.text, path
        assert "rev_login_csrf" in r.headers.get("set-cookie", "")
    token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
    r = c.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert 'id="review-form"' in c.get("/", headers={"accept": "text/html"}).text
    api = TestClient(app).get("/api/next")
    assert api.status_code == 401 and api.json() == {"detail": "log in first"}


def test_a_typo_is_offered_the_concept_it_misspells_among_all_of_wordnet(env, tmp_path, wordnet_graph):
    """With every WordNet noun as a label, "dgo" was offered 'Sao Bernardo do Campo', dingo and San
    Diego (the words "do", "dingo", "diego" look more like it to difflib) and never dog, the case
    docs/review.md quotes: fewest edits first, a swap of two letters one edit, whole names first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from annotator_ui.tags import TagIndex

    g = wordnet_graph.g
    ids = list(g.nodes)
    d = tmp_path / "wn"
    d.mkdir()
    nodes = {"id": ids, "label_en": [g.nodes[n]["label_en"] for n in ids], "label_zh": [g.nodes[n]["label_zh"] for n in ids]}
    pq.write_table(pa.table(nodes), d / "nodes.parquet")
    tags = TagIndex(env[1], str(d))
    assert tags.close("dgo")[0] == {"id": "wn:02084071", "en": "dog", "zh": g.nodes["wn:02084071"]["label_zh"]}
    assert tags.close("giraffee")[0]["en"] == "giraffe" and tags.close("elephnat")[0]["en"] == "elephant"
