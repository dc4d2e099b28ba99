"""The HTTP API and pages against a real review database (SQLite file and PostgreSQL, see
``db_url``) and a real Lance dataset (TestClient)."""

from __future__ import annotations

import json
import re

import lance
import pytest
from fastapi.testclient import TestClient

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
