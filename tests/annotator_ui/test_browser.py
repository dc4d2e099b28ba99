"""The annotator UI in a real browser (Debian chromium driven by Playwright) against a real server."""

from __future__ import annotations

import json

import lance
import pytest

from annotator_ui.app import AppSettings, create_app
from curation.reviewdb import ReviewDB
from curation.store import Store
from pipelines.review import ReviewMineConfig, mine_queue, review_apply_action
from tests.helpers import PASSWORD, add_signals, coco_rows, samples_table, served, wait_until

pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2;alert(1)</script> a dog'


def _graph(tmp_path) -> str:
    """A concept graph folder with the nodes file the tag suggestions read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "graph"
    d.mkdir()
    nodes = {"id": ["wn:02121620", "wn:02084071", "wn:02121808"], "label_en": ["cat", "dog", "house cat"], "label_zh": ["猫", "狗", "家猫"]}
    pq.write_table(pa.table(nodes), d / "nodes.parquet")
    return str(d)


@pytest.fixture
def server(tmp_path, coco_dir, request):
    """A dataset with an XSS caption, mined into a review DB, served by uvicorn on loopback
    (a test may pass more ``AppSettings`` fields as the fixture's indirect parameter)."""

    rows = coco_rows(coco_dir, limit=8)
    rows[3]["captions"] = [{"text": XSS, "kind": "short", "lang": "en"}]
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri)
    add_signals(uri)
    store = Store(uri)
    dbfile = str(tmp_path / "review.sqlite")
    mine_queue(store, ReviewMineConfig(n=8, min_hardness=0.0, double_share=0.0, db=dbfile), show_progress=False)
    db = ReviewDB(dbfile)
    db.add_user("alice", PASSWORD)
    db.add_user("boss", PASSWORD, "admin")
    # serve the XSS row first
    with db.tx() as t:
        t.exec("UPDATE items SET priority = 1000 WHERE row_id = ?", (rows[3]["id"],))
    app = create_app(
        AppSettings(db_url=dbfile, dataset=uri, graph=_graph(tmp_path), **getattr(request, "param", {})),
        db,
        apply=review_apply_action(dbfile),
    )
    with served(app) as base:
        yield base, store, db, rows, dbfile
    db.close()


def test_review_three_items_with_the_keyboard_then_apply(server, browser, ray_session):
    base, store, db, rows, dbfile = server
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(base + "/login")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-button")
    assert page.url == base + "/"

    # item 1: the XSS caption is shown as text and never runs; edit it with the keyboard, accept
    assert page.text_content("#row-id") == rows[3]["id"]
    assert page.input_value("#caption") == XSS
    assert page.evaluate("window.__xss === undefined") and dialogs == []
    assert page.evaluate("document.getElementById('item-image').naturalWidth") > 0  # image by row id
    page.keyboard.press("e")
    assert page.evaluate("document.activeElement.id") == "caption"
    page.keyboard.press("Control+a")
    page.keyboard.type("A brown dog on a sofa")
    page.keyboard.press("a")  # typing in the caption: a letter, not a shortcut
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("a")
    # item 2: reject
    second = page.text_content("#row-id")
    assert second != rows[3]["id"]
    with page.expect_navigation():
        page.keyboard.press("r")
    # item 3: flag as a failure
    third = page.text_content("#row-id")
    assert third not in (second, rows[3]["id"])
    with page.expect_navigation():
        page.keyboard.press("f")
    assert page.text_content("#my-count") == "3"
    assert page.evaluate("window.__xss === undefined") and dialogs == []

    decided = {d["row_id"]: d for d in db.decisions()}
    assert decided[rows[3]["id"]]["caption"] == "A brown dog on a sofaa"
    assert decided[rows[3]["id"]]["decision"] == "keep"
    assert decided[second]["decision"] == "drop" and not decided[second]["flag"]
    assert decided[third]["decision"] == "drop" and decided[third]["flag"]

    # an admin applies the decisions from the admin page (the same code as `curate review apply`)
    before = store.open().version
    admin = browser.new_context().new_page()
    admin.goto(base + "/login")
    admin.fill("#username", "boss")
    admin.fill("#password", PASSWORD)
    with admin.expect_navigation():
        admin.click("#login-button")
    admin.goto(base + "/admin")
    with admin.expect_navigation(timeout=180_000):
        admin.click("#apply-button")
    assert admin.text_content("#apply-version") == str(store.open().version) and store.open().version == before + 1
    assert admin.text_content("#apply-captions") == "1"
    t = store.open().to_table(columns=["id", "rev_caption", "rev_decision", "rev_flag"], filter=f"id = '{rows[3]['id']}'")
    assert t.column("rev_caption")[0].as_py() == "A brown dog on a sofaa"
    assert t.column("rev_decision")[0].as_py() == "keep"

    # reloading the page after apply: the next item shows, the XSS text stayed inert throughout
    page.goto(base + "/")
    assert page.evaluate("window.__xss === undefined") and dialogs == []


def _login(page, base, name="alice"):
    page.goto(base + "/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-button")


def test_shortcuts_work_after_ticking_a_reason_and_a_lost_lease_keeps_the_caption(server, browser):
    """Ticking a reject reason left the focus in the checkbox and every shortcut dead until Esc;
    a lost lease (or a forbidden page) showed raw JSON and the edited caption was gone."""
    base, store, db, rows, dbfile = server
    page = browser.new_page()
    _login(page, base)
    # item 1: tick a reason with the mouse, then reject with the keyboard
    first = page.text_content("#row-id")
    page.click("text=low quality")
    assert page.evaluate("document.activeElement.type") == "checkbox"
    with page.expect_navigation():
        page.keyboard.press("r")
    decided = {d["row_id"]: d for d in db.decisions()}
    assert decided[first]["decision"] == "drop" and decided[first]["reasons"] == ["low quality"]

    # item 2: edit the caption, then the lease runs out (the annotator was away) before accepting
    second = page.text_content("#row-id")
    item_id = int(page.get_attribute("#review-form", "data-item"))
    page.keyboard.press("e")
    page.keyboard.press("Control+a")
    page.keyboard.type("a careful caption, written slowly")
    page.keyboard.press("Escape")
    with db.tx() as t:
        t.exec("UPDATE items SET lease_user = NULL, lease_expires = 0 WHERE id = ?", (item_id,))
    with page.expect_navigation() as nav:
        page.keyboard.press("a")
    assert nav.value.status == 403
    assert "lease" in page.text_content("#problem-message") and not page.text_content("body").lstrip().startswith("{")
    assert page.input_value("#kept-caption") == "a careful caption, written slowly"
    assert second not in {d["row_id"] for d in db.decisions()}

    # reload: the same item comes back (nobody took it) with the caption restored
    with page.expect_navigation():
        page.click("#next-link")
    assert page.text_content("#row-id") == second
    assert page.input_value("#caption") == "a careful caption, written slowly" and page.is_visible("#draft-note")
    with page.expect_navigation():
        page.keyboard.press("a")
    assert {d["row_id"]: d for d in db.decisions()}[second]["caption"] == "a careful caption, written slowly"
    assert not page.is_visible("#draft-note")  # a new item: the old draft is not put into it
    third_caption = page.input_value("#caption")
    assert third_caption != "a careful caption, written slowly"

    # a forbidden page is a page, not JSON
    resp = page.goto(base + "/admin")
    assert resp.status == 403 and page.text_content("h1") == "Not allowed" and page.is_visible("#next-link")


def _box(page, sel):
    return page.evaluate(
        "s => { const r = document.querySelector(s).getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; }", sel
    )


def _inside(inner, outer, slack=1.0):
    return (
        inner["x"] >= outer["x"] - slack
        and inner["y"] >= outer["y"] - slack
        and inner["x"] + inner["w"] <= outer["x"] + outer["w"] + slack
        and inner["y"] + inner["h"] <= outer["y"] + outer["h"] + slack
    )


@pytest.mark.parametrize("size", [(1366, 900), (1366, 768), (1024, 768), (1024, 640)])
def test_action_buttons_and_the_whole_image_fit_the_window_and_z_zooms_to_100_percent(server, browser, size):
    """At laptop sizes the buttons were below the fold (and the image pushed them there): now
    the buttons and the whole image are on screen without scrolling; ``z`` (or a click) shows the
    image at its natural size in a box that scrolls to pan, and back."""
    base, store, db, rows, dbfile = server
    w, h = size
    page = browser.new_context(viewport={"width": w, "height": h}).new_page()
    _login(page, base)
    wait_until(page, "document.getElementById('item-image').complete && document.getElementById('item-image').naturalWidth > 0")
    view = {"x": 0, "y": 0, "w": w, "h": h}
    for sel in ("#btn-accept", "#btn-reject", "#btn-skip", "#btn-flag", "#caption"):
        assert _inside(_box(page, sel), view), (sel, _box(page, sel), size)
    assert page.evaluate("window.scrollY") == 0 and page.evaluate("document.documentElement.scrollHeight") <= h
    img, area = _box(page, "#item-image"), _box(page, "#image-box")
    nat = page.evaluate("[document.getElementById('item-image').naturalWidth, document.getElementById('item-image').naturalHeight]")
    assert _inside(img, area) and _inside(area, view)
    assert abs(img["w"] / img["h"] - nat[0] / nat[1]) < 0.02  # scaled, not stretched
    assert img["w"] >= area["w"] - 2 or img["h"] >= area["h"] - 2 or (img["w"], img["h"]) == tuple(nat)  # fills one side, or natural
    page.keyboard.press("z")
    zoomed = _box(page, "#item-image")
    assert (round(zoomed["w"]), round(zoomed["h"])) == tuple(nat)
    assert page.get_attribute("#btn-zoom", "aria-pressed") == "true"
    assert _inside(_box(page, "#btn-accept"), view)  # zooming never pushes the buttons away
    page.keyboard.press("z")
    assert _box(page, "#item-image") == img
    page.click("#item-image")  # a click zooms too
    assert round(_box(page, "#item-image")["w"]) == nat[0]


def test_saved_message_undo_with_b_and_history(server, browser):
    """After a decision the page says "saved: keep #id" in an aria-live region (the next item is
    already there, nothing to dismiss); ``b`` takes the decision back and shows the item again;
    /history lists it, with the caption edit."""
    base, store, db, rows, dbfile = server
    page = browser.new_page()
    _login(page, base)
    first = int(page.get_attribute("#review-form", "data-item"))
    with page.expect_navigation():
        page.keyboard.press("a")
    saved = page.locator("#saved")
    assert saved.get_attribute("aria-live") == "polite" and saved.get_attribute("role") == "status"
    wait_until(page, "document.getElementById('saved').textContent.length > 0")
    assert saved.text_content() == f"saved: keep #{first}" and saved.is_visible()
    second = int(page.get_attribute("#review-form", "data-item"))
    assert second != first and page.evaluate("document.activeElement === document.body")
    with page.expect_navigation():
        page.keyboard.press("b")
    assert int(page.get_attribute("#review-form", "data-item")) == first
    # app.js empties the live region and refills it 50 ms later, so screen readers announce it
    wait_until(page, "document.getElementById('saved').textContent.length > 0")
    assert f"undone: #{first}" in page.text_content("#saved") and db.decisions() == []
    page.keyboard.press("e")
    page.keyboard.press("Control+a")
    page.keyboard.type("a second look")
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("r")
    page.goto(base + "/history")
    assert page.locator("#history-table tbody tr").count() == 1
    row = page.locator(f'tr[data-item="{first}"]')
    assert "drop" in row.text_content() and "a second look" in row.text_content()
    assert page.evaluate("document.querySelector('.thumb').complete && document.querySelector('.thumb').naturalWidth > 0")


def test_invisible_characters_are_marked_while_typing(server, browser):
    """A bidi override pasted into the caption: the editor warns at once and shows the caption
    with a visible marker in its place; saving stores the caption without it."""
    base, store, db, rows, dbfile = server
    page = browser.new_page()
    _login(page, base)
    assert page.is_hidden("#invisible-warning") and page.is_hidden("#caption-shown")
    page.fill("#caption", "a cat \u202egpj.exe\u202c")
    assert page.is_visible("#invisible-warning") and page.text_content("#invisible-count") == "2"
    assert page.text_content("#caption-shown") == "a cat \u27e8RLO\u27e9gpj.exe\u27e8PDF\u27e9"
    page.fill("#caption", "a cat")
    assert page.is_hidden("#invisible-warning")
    page.fill("#caption", "a cat \u200bon a sofa")
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("a")
    assert db.decisions()[-1]["caption"] == "a cat on a sofa"


def test_tag_field_suggests_names_and_stores_ids(server, browser):
    """Typing a name (English or Chinese) in the tags field offers concepts; a click or Enter
    puts the concept's id in the field, and the decision stores ids."""
    base, store, db, rows, dbfile = server
    page = browser.new_page()
    _login(page, base)
    page.fill("#tags", "")
    page.click("#tags")
    page.keyboard.type("ca")
    page.wait_for_selector("#tag-suggest li")
    assert page.get_attribute("#tags", "aria-expanded") == "true"
    first = page.locator("#tag-suggest li").first
    assert first.get_attribute("data-id") == "wn:02121620" and "cat" in first.text_content() and "猫" in first.text_content()
    first.click()
    assert page.input_value("#tags") == "wn:02121620, " and page.is_hidden("#tag-suggest")
    page.keyboard.type("狗")
    page.wait_for_selector("#tag-suggest li")
    page.keyboard.press("Enter")  # picks the suggestion, does not submit the form
    assert page.input_value("#tags") == "wn:02121620, wn:02084071, " and db.decisions() == []
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("a")
    assert db.decisions()[-1]["tags"] == ["wn:02121620", "wn:02084071"]


def test_an_unknown_tag_is_refused_with_close_concepts_and_kept_for_the_retry(server, browser):
    """Audit: a typo in the tags field was saved and then did nothing. Now the decision is
    refused by a page that names the tag and the close concepts, keeps the tags as typed, and
    the same item comes back with them; a name (English or Chinese) is saved as the id, and the
    history shows the tags by name."""
    base, store, db, rows, dbfile = server
    page = browser.new_page()
    _login(page, base)
    item = page.get_attribute("#review-form", "data-item")
    page.click("#tags")
    page.keyboard.press("Control+a")
    page.keyboard.type("cat, dgo")
    page.keyboard.press("Escape")
    with page.expect_navigation() as nav:
        page.keyboard.press("a")
    assert nav.value.status == 422 and page.text_content("h1").strip() == "Unknown tags"
    message = page.text_content("#problem-message")
    assert "unknown tag 'dgo'" in message and "dog (wn:02084071)" in message and "cat" not in message.split("(a tag")[0]
    assert page.input_value("#kept-tags") == "cat, dgo" and db.decisions() == []
    with page.expect_navigation():
        page.click("#next-link")
    assert page.get_attribute("#review-form", "data-item") == item  # still leased to her
    assert page.input_value("#tags") == "cat, dgo" and page.is_visible("#draft-tags-note")
    page.click("#tags")
    page.keyboard.press("Control+a")
    page.keyboard.type("Cat, 狗")
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("a")
    assert page.url.startswith(base + "/?saved=")
    assert db.decisions()[-1]["tags"] == ["wn:02121620", "wn:02084071"]
    page.goto(f"{base}/history/{item}")
    assert page.text_content("#hist-tags") == "cat 猫, dog 狗"


@pytest.mark.parametrize("server", [{"gold_feedback": True, "gold_rate": 1.0}], indirect=True)
def test_gold_feedback_line_after_a_decision_on_a_check_item(server, browser):
    """With gold feedback on, the saved line says the item was a check and what was expected."""
    base, store, db, rows, dbfile = server
    with db.tx(write=False) as t:
        row_id, payload = t.one("SELECT row_id, payload FROM items WHERE row_id <> ? ORDER BY id LIMIT 1", (rows[3]["id"],))
    assert db.enqueue([{"row_id": row_id, "priority": 0.0, "payload": json.loads(payload), "gold_answer": "keep"}], "g")["gold"] == 1
    page = browser.new_page()
    _login(page, base)
    assert page.text_content("#row-id") == row_id
    with page.expect_navigation():
        page.keyboard.press("r")
    wait_until(page, "document.getElementById('saved').textContent.indexOf('check item') > 0")
    assert page.text_content("#gold-feedback").strip() == "\u00b7 this was a check item; the expected answer was keep"
    assert page.get_attribute("#gold-feedback", "class") == "wrong" and page.is_hidden("#btn-undo") is True


def test_enter_in_the_tags_field_never_records_a_decision(server, browser):
    """Audit #6: Enter in the tags field with no suggestion list open submitted the form with its
    first button, "accept" (the tag typed was stored too). With app.js and without it (a disabled
    default button), Enter there records nothing; the keys and buttons still decide."""
    base, store, db, rows, dbfile = server
    for js in (True, False):
        page = browser.new_context(java_script_enabled=js).new_page()
        _login(page, base)
        item = page.get_attribute("#review-form", "data-item")
        page.click("#tags")
        page.keyboard.press("End")
        page.keyboard.type(", zzzqqq")
        page.wait_for_timeout(400)  # the suggestion request (120 ms debounce) finds nothing
        assert page.is_hidden("#tag-suggest")
        page.keyboard.press("Enter")
        page.wait_for_timeout(1000)
        assert db.decisions() == [], f"javascript {'on' if js else 'off'}"
        assert page.get_attribute("#review-form", "data-item") == item and page.url == base + "/"
        assert page.input_value("#tags").endswith(", zzzqqq")
        page.context.close()
    page = browser.new_page()
    _login(page, base)
    page.click("#tags")
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("a")  # the shortcut still decides
    assert [d["decision"] for d in db.decisions()] == ["keep"]


def test_a_page_opened_without_a_session_shows_the_login_form(server, browser):
    """Audit #14: a bookmarked page without a session showed "Please log in." and a link; the
    login form is there now, and logging in from it lands on the review page."""
    base, store, db, rows, dbfile = server
    page = browser.new_page()
    page.goto(base + "/history")
    assert page.is_visible("#login-form") and page.text_content("#login-error") == "Please log in."
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-button")
    assert page.url == base + "/" and page.is_visible("#review-form")
