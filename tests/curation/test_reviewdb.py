"""The review database layer, on a real SQLite file and a real PostgreSQL server (``db_url`` is
parametrized): leases, decisions, gold, audit, concurrency."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from curation.reviewdb import Conflict, NotFound, NotLeased, ReviewDB
from curation.security import hash_password, verify_password
from tests.helpers import PASSWORD, make_items


def _users(db):
    return {u.name: u for u in db.users()}


def test_passwords_are_scrypt_hashes_and_sessions_store_only_digests(review_db):
    h = hash_password("s3cret-pass")
    assert h.startswith("scrypt$") and "s3cret" not in h
    assert verify_password("s3cret-pass", h) and not verify_password("s3cret-pasS", h)
    assert not verify_password("x", "garbage$$")
    assert review_db.authenticate("alice", PASSWORD).name == "alice"
    assert review_db.authenticate("alice", "wrong password") is None
    assert review_db.authenticate("nobody", PASSWORD) is None
    with pytest.raises(ValueError):
        review_db.add_user("alice", PASSWORD)
    token, csrf = review_db.create_session(_users(review_db)["alice"], 60)
    with review_db.tx(write=False) as t:
        raw = t.all("SELECT token_hash, csrf FROM sessions")
        stored = t.all("SELECT pw_hash FROM users")
    assert raw and all(h[0].startswith("scrypt$") for h in stored)
    assert all(token not in row[0] for row in raw)
    assert review_db.session(token)[0].name == "alice" and review_db.session("forged") is None


def test_lease_order_exclusivity_and_renewal(review_db):
    u = _users(review_db)
    review_db.enqueue(make_items(5), "b1")
    a = review_db.next_item(u["alice"])
    b = review_db.next_item(u["bob"])
    assert a["row_id"] == "r000000" and b["row_id"] == "r000001"  # highest priority first, never the same
    again = review_db.next_item(u["alice"])
    assert again["id"] == a["id"] and again["lease_expires"] >= a["lease_expires"]  # reload keeps the item
    with pytest.raises(NotLeased):
        review_db.submit(u["bob"], a["id"], "keep")  # bob cannot decide alice's item
    with pytest.raises(NotLeased):
        review_db.leased_item(u["bob"], a["id"])  # nor look at it


def test_submit_is_idempotent_and_conflicts_are_refused(review_db):
    u = _users(review_db)
    review_db.enqueue(make_items(3), "b1")
    it = review_db.next_item(u["alice"])
    r1 = review_db.submit(u["alice"], it["id"], "drop", caption="fixed", tags=["dog"], reasons=["low quality"])
    r2 = review_db.submit(u["alice"], it["id"], "drop", caption="fixed", tags=["dog"], reasons=["low quality"])
    assert not r1["duplicate"] and r2["duplicate"]
    with pytest.raises(Conflict):
        review_db.submit(u["alice"], it["id"], "keep")
    c = review_db.counters()
    assert c["decisions"] == 1 and c["drop"] == 1 and c["items_done"] == 1 and c["items_open"] == 2
    assert len(review_db.decisions()) == 1


def test_invisible_bidi_and_zero_width_characters_never_reach_the_stored_caption(review_db):
    """U+202E shows "a cat gpj.exe" as "a cat exe.jpg", a zero-width space splits a word unseen:
    both are removed from an edited caption (and counted in the audit); joiners that Persian and
    emoji need stay."""
    u = _users(review_db)
    review_db.enqueue(make_items(1), "b1")
    it = review_db.next_item(u["alice"])
    review_db.submit(
        u["alice"], it["id"], "keep", caption="a cat \u202egpj.exe\u202c on a so\u200bfa \u2066x\u2069 \ufeffمی\u200cخواهم 👩\u200d💻"
    )
    (d,) = review_db.decisions()
    assert d["caption"] == "a cat gpj.exe on a sofa x می\u200cخواهم 👩\u200d💻"
    with review_db.tx(write=False) as t:
        audit = [r[0] for r in t.all("SELECT detail FROM audit WHERE action = 'submit'")]
    assert any('"invisible_removed": 6' in a for a in audit), audit


def test_lease_expiry_returns_the_item(review_db):
    u = _users(review_db)
    review_db.enqueue(make_items(1), "b1")
    it = review_db.next_item(u["alice"], lease_s=0.05)
    assert review_db.next_item(u["bob"]) is None  # the only item is leased
    time.sleep(0.1)  # alice's browser crashed; the lease runs out
    again = review_db.next_item(u["bob"])
    assert again["id"] == it["id"]
    with pytest.raises(NotLeased):
        review_db.submit(u["alice"], it["id"], "keep")
    assert review_db.submit(u["bob"], it["id"], "keep")["duplicate"] is False


def test_double_annotation_gold_and_skips(review_db):
    u = _users(review_db)
    items = make_items(4, double_every=1)  # every item needs two annotators
    items[0]["gold_answer"] = "keep"
    review_db.enqueue(items, "b1")
    rng = random.Random(0)
    g = review_db.next_item(u["alice"], gold_rate=1.0, rng=rng)
    assert g["gold"] and g["row_id"] == "r000000"
    review_db.submit(u["alice"], g["id"], "drop")  # wrong on gold
    g2 = review_db.next_item(u["bob"], gold_rate=1.0, rng=rng)
    assert g2["id"] == g["id"]  # gold stays in the queue for every annotator
    review_db.submit(u["bob"], g2["id"], "keep")
    acc = {a["user"]: a["gold_accuracy"] for a in review_db.per_user()}
    assert acc["alice"] == 0.0 and acc["bob"] == 1.0
    # a double-annotated item goes to two different people, then is done
    it = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], it["id"], "keep")
    nxt = review_db.next_item(u["alice"])
    assert nxt["id"] != it["id"]
    review_db.skip(u["alice"], nxt["id"])
    assert review_db.next_item(u["alice"])["id"] not in (it["id"], nxt["id"])  # skipped: not offered again to alice
    b = review_db.next_item(u["bob"])
    assert b["id"] in (it["id"], nxt["id"])
    review_db.submit(u["bob"], b["id"], "keep" if b["id"] == it["id"] else "drop")
    if b["id"] == it["id"]:
        assert review_db.get_item(it["id"])["status"] == "done"
        assert review_db.double_annotated() == [("keep", "keep")]
    actions = Counter(a["action"] for a in review_db.audit_tail(100))
    assert actions["lease"] >= 4 and actions["submit"] == 4 and actions["skip"] == 1 and actions["enqueue"] == 1


def test_sql_metacharacters_are_inert(review_db, tmp_path):
    u = _users(review_db)
    nasty = "'); DROP TABLE items; -- \" OR 1=1; /* */ %s ? \\x00"
    items = make_items(2)
    items[0]["payload"]["caption"] = nasty
    review_db.enqueue(items, "b'; DROP TABLE users; --")
    it = review_db.next_item(u["alice"])
    assert it["payload"]["caption"] == nasty
    review_db.submit(u["alice"], it["id"], "keep", caption=nasty + "!", tags=["x'); --"])
    d = review_db.decisions()[0]
    assert d["caption"] == nasty + "!" and d["tags"] == ["x'); --"]
    assert review_db.authenticate("' OR '1'='1", "' OR '1'='1") is None
    assert review_db.counters()["items_total"] == 2 and len(review_db.users()) == 3


def test_reenqueue_updates_open_items_and_keeps_reviewed_ones(review_db):
    u = _users(review_db)
    review_db.enqueue(make_items(3), "b1")
    it = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], it["id"], "keep")
    again = make_items(4)
    for x in again:
        x["priority"] = -x["priority"]  # reversed order now
    res = review_db.enqueue(again, "b2")
    assert res == {"added": 1, "updated": 2, "unchanged": 1}
    order = []
    while (x := review_db.next_item(u["bob"])) is not None:
        order.append(x["row_id"])
        review_db.submit(u["bob"], x["id"], "keep")
    assert order == ["r000003", "r000002", "r000001"]  # new priorities; r000000 was reviewed already


def test_twenty_annotators_in_threads_never_share_a_lease_nor_lose_a_decision(db_url):
    db = ReviewDB(db_url)
    users = [db.add_user(f"ann{i:02d}", PASSWORD) for i in range(20)]
    n = 300
    db.enqueue(make_items(n, double_every=5, gold=0), "b1")
    expected_decisions = sum(2 if i % 5 == 0 else 1 for i in range(n))
    held: set[int] = set()
    lock = threading.Lock()
    problems: list[str] = []
    made: list[tuple[int, int, str]] = []

    def annotator(user, seed):
        try:
            work(user, seed)
        except Exception as e:  # a thread's error must fail the test by name, not as a missing decision
            problems.append(f"{user.name}: {e!r}")

    def work(user, seed):
        rng = random.Random(seed)
        deadline = time.time() + 120
        while True:
            it = db.next_item(user, lease_s=60)
            if it is None:
                # Nothing free now is not "done": an item others hold may still need a second
                # annotator once decided. Stopping here left such an item open with nobody left
                # to take it (359 of 360 decisions, seen once on PostgreSQL): wait for the queue.
                if db.counters()["items_open"] == 0:
                    return
                if time.time() > deadline:
                    problems.append(f"{user.name}: queue not finished in time")
                    return
                time.sleep(0.002)
                continue
            with lock:
                if it["id"] in held:
                    problems.append(f"item {it['id']} leased twice at once")
                held.add(it["id"])
            time.sleep(rng.random() * 0.002)
            dec = rng.choice(["keep", "drop"])
            with lock:
                held.discard(it["id"])  # before submit: the database releases the lease in that transaction
            r = db.submit(user, it["id"], dec)
            if r["duplicate"]:
                problems.append(f"unexpected duplicate on {it['id']}")
            if rng.random() < 0.2:  # a retried request (network blip): must not count twice
                if not db.submit(user, it["id"], dec)["duplicate"]:
                    problems.append("retry was not idempotent")
            with lock:
                made.append((it["id"], user.id, dec))

    threads = [threading.Thread(target=annotator, args=(u, i)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    stored = {(d["item_id"], d["user"], d["decision"]) for d in db.decisions()}
    names = {u.id: u.name for u in users}
    assert len(made) == expected_decisions == len(db.decisions())
    assert stored == {(i, names[u], d) for i, u, d in made}
    c = db.counters()
    assert c["items_done"] == n and c["items_open"] == 0 and c["decisions"] == expected_decisions
    per_row = Counter(d["row_id"] for d in db.decisions())
    assert all(per_row[f"r{i:06d}"] == (2 if i % 5 == 0 else 1) for i in range(n))
    assert all(len({u for i2, u, _ in made if i2 == i}) == k for i, k in Counter(i for i, _, _ in made).items())
    db.close()


def test_background_checkpoints_keep_the_wal_copied_back(tmp_path):
    """The server checkpoints the SQLite WAL from a background thread (not inside a request's commit):
    with SQLite's automatic checkpoint pushed out of reach, the pages still reach the database file."""
    path = tmp_path / "ckpt.sqlite"
    db = ReviewDB(path)
    db.start_background_checkpoints(every_s=0.05)
    with db.tx(write=False) as t:
        assert t.one("PRAGMA wal_autocheckpoint")[0] == 50_000  # SQLite's own one is only a safety net now
    size0 = path.stat().st_size
    db.enqueue(make_items(3000), "b1")  # a few hundred pages, far below the safety net
    deadline = time.time() + 20
    while path.stat().st_size <= size0 + 200_000 and time.time() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > size0 + 200_000, "the WAL was not checkpointed into the database file"
    db.close()


def test_a_database_of_another_schema_version_is_refused(review_db):
    """The schema version recorded at creation is checked on every open: a database written by
    another layout is refused with what to do, before anything reads its tables."""
    from curation.reviewdb import SCHEMA_VERSION, BadInput

    assert review_db.get_meta("schema_version") == SCHEMA_VERSION
    ReviewDB(review_db.url).close()  # the same version opens
    review_db.set_meta("schema_version", "0")
    with pytest.raises(BadInput, match="schema version 0"):
        ReviewDB(review_db.url)


def _audit(db, action):
    return [a for a in db.audit_tail(1000) if a["action"] == action]


def test_eighty_wrong_passwords_then_the_right_one_is_refused_and_the_lockout_audited(review_db, monkeypatch):
    """Login throttling per account: after ``max_failures`` failures further attempts are
    refused before the password hash runs (the right password too), a lockout is audited, and
    it expires (the clock is injected, no sleeping)."""
    from curation import reviewdb
    from curation.reviewdb import LoginPolicy, Throttled

    policy = LoginPolicy(max_failures=5, max_failures_addr=50, window_s=60, lockout_s=10, max_lockout_s=100)
    hashes = []
    real = reviewdb.verify_password
    monkeypatch.setattr(reviewdb, "verify_password", lambda p, h: hashes.append(1) or real(p, h))
    t0 = 1_000_000.0
    refused = []
    for i in range(80):
        try:
            assert review_db.authenticate("alice", f"wrong {i}", addr="10.0.0.1", policy=policy, now=t0 + i * 0.01) is None
        except Throttled as e:
            refused.append(e.retry_after)
    assert len(refused) == 75 and len(hashes) == 5  # no hash while locked out
    assert all(1 <= r <= 10 for r in refused)
    with pytest.raises(Throttled):
        review_db.authenticate("alice", PASSWORD, addr="10.0.0.1", policy=policy, now=t0 + 1)
    # another account from another address is unaffected
    assert review_db.authenticate("bob", PASSWORD, addr="10.0.0.2", policy=policy, now=t0 + 1).name == "bob"
    (lock,) = _audit(review_db, "login_lockout")
    assert '"name": "alice"' in lock["detail"] and '"failures": 5' in lock["detail"]
    # the lockout runs out; the right password works and resets the account
    assert review_db.authenticate("alice", PASSWORD, addr="10.0.0.1", policy=policy, now=t0 + 11).name == "alice"
    for i in range(4):
        assert review_db.authenticate("alice", "wrong", addr="10.0.0.1", policy=policy, now=t0 + 12 + i) is None


def test_lockouts_grow_and_unknown_names_are_throttled_alike(review_db):
    """Each further lockout doubles (up to the cap); a name that has no account gets exactly the
    same answers as a real one, so the throttle tells nothing about which names exist."""
    from curation.reviewdb import LoginPolicy, Throttled

    policy = LoginPolicy(max_failures=3, max_failures_addr=100, window_s=60, lockout_s=10, max_lockout_s=35)

    def run(name: str) -> list:
        now, out = 2_000_000.0, []
        for _ in range(4):  # four rounds: fail until locked, note the wait, then wait it out
            while True:
                try:
                    review_db.authenticate(name, "wrong password", policy=policy, now=now)
                except Throttled as e:
                    out.append(e.retry_after)
                    now += e.retry_after
                    break
        return out

    real, ghost = run("alice"), run("nobody-here")
    assert real == ghost == [10, 20, 35, 35]
    assert {a["detail"].split('"name": ')[1].split(",")[0] for a in _audit(review_db, "login_lockout")} == {'"alice"', '"nobody-here"'}


def test_one_address_trying_many_accounts_is_locked_out(review_db):
    """The per-address limit: a machine spraying passwords over many names is refused (even for
    a right password) while another address logs in; a success from the address does not clear
    its failures (else a valid account would reset the spray between guesses)."""
    from curation.reviewdb import LoginPolicy, Throttled

    policy = LoginPolicy(max_failures=5, max_failures_addr=6, window_s=60, lockout_s=30)
    now = 3_000_000.0
    for i in range(5):
        review_db.authenticate(f"user{i}", "guess", addr="10.9.9.9", policy=policy, now=now)
    assert review_db.authenticate("bob", PASSWORD, addr="10.9.9.9", policy=policy, now=now).name == "bob"
    assert review_db.authenticate("user9", "guess", addr="10.9.9.9", policy=policy, now=now) is None
    with pytest.raises(Throttled):
        review_db.authenticate("alice", PASSWORD, addr="10.9.9.9", policy=policy, now=now + 1)
    assert review_db.authenticate("alice", PASSWORD, addr="10.1.1.1", policy=policy, now=now + 1).name == "alice"
    assert any('"addr": "10.9.9.9"' in a["detail"] for a in _audit(review_db, "login_lockout"))


def test_gold_rows_already_queued_become_gold_or_are_reported(review_db):
    """A queued row nobody decided becomes a gold item; one already decided as a normal item is
    reported with the reason (never dropped silently); ``gold`` counts what is really gold."""
    u = _users(review_db)
    review_db.enqueue(make_items(3), "b1")
    it = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], it["id"], "keep")  # r000000 reviewed as a normal item
    gold = make_items(4)
    for x, ans in zip(gold, ("keep", "drop", "keep", "drop")):
        x["gold_answer"] = ans
    res = review_db.enqueue(gold, "gold")
    assert res["gold"] == 3 and [s["row_id"] for s in res["gold_skipped"]] == ["r000000"]
    assert review_db.counters()["gold_items"] == 3
    with review_db.tx(write=False) as t:
        assert dict(t.all("SELECT row_id, gold_answer FROM items WHERE gold = 1")) == {
            "r000001": "drop",
            "r000002": "keep",
            "r000003": "drop",
        }
    again = review_db.enqueue(gold[1:2], "gold-again")  # already gold: counted, not skipped, not counted twice
    assert again["gold"] == 1 and again["gold_skipped"] == [] and review_db.counters()["gold_items"] == 3


def test_undo_takes_back_the_latest_decision_fixes_the_counters_and_gives_the_item_back(review_db):
    """Undo (the review page's ``b``): the decision row goes, the counters go back, the item is
    leased to the same annotator again (their next item back to the queue), and it is audited.
    Only the latest decision, only for a while, never someone else's."""
    u = _users(review_db)
    review_db.enqueue(make_items(3), "b1")
    it = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], it["id"], "drop", flag=True, caption="edited")
    nxt = review_db.next_item(u["alice"])  # the page already shows the next item
    before = review_db.counters()
    assert before["items_done"] == 1 and before["drop"] == 1 and before["flag"] == 1
    with pytest.raises(NotFound):
        review_db.undo(u["bob"], it["id"])  # not bob's decision
    assert review_db.undo(u["alice"], it["id"]) == {"item_id": it["id"], "undone": "drop", "flag": True}
    c = review_db.counters()
    assert (c["decisions"], c["drop"], c["flag"], c["items_done"], c["items_open"]) == (0, 0, 0, 0, 3)
    assert review_db.decisions() == []
    again = review_db.next_item(u["alice"])
    assert again["id"] == it["id"] and again["status"] == "open"  # back to alice, not the next item
    assert review_db.get_item(nxt["id"])["lease_user"] is None
    with pytest.raises(NotFound):
        review_db.undo(u["alice"], it["id"])  # nothing left to undo
    undo = [a for a in review_db.audit_tail(10) if a["action"] == "undo"]
    assert len(undo) == 1 and undo[0]["user"] == "alice" and '"decision": "drop"' in undo[0]["detail"]
    # a new decision stands; only the latest can be undone, and not after the window
    review_db.submit(u["alice"], it["id"], "keep")
    second = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], second["id"], "keep")
    with pytest.raises(Conflict, match="latest"):
        review_db.undo(u["alice"], it["id"])
    with pytest.raises(Conflict, match="undone for"):
        review_db.undo(u["alice"], second["id"], within_s=0.0)
    assert review_db.counters()["keep"] == 2 and len(review_db.decisions()) == 2


def test_undo_of_a_double_annotated_item_another_annotator_now_holds_is_refused(review_db):
    u = _users(review_db)
    review_db.enqueue(make_items(1, double_every=1), "b1")
    it = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], it["id"], "keep")
    assert review_db.next_item(u["bob"])["id"] == it["id"]  # the second annotator has it now
    with pytest.raises(Conflict, match="someone else"):
        review_db.undo(u["alice"], it["id"])
    review_db.submit(u["bob"], it["id"], "keep")
    assert review_db.get_item(it["id"])["status"] == "done"
    review_db.undo(u["bob"], it["id"])  # the item reopens for bob
    c = review_db.counters()
    assert c["items_done"] == 0 and c["items_open"] == 1 and c["decisions"] == 1
    assert review_db.get_item(it["id"])["status"] == "open" and review_db.get_item(it["id"])["done_count"] == 1


def test_concurrent_undos_and_submits_keep_the_counters_exact(db_url):
    """Eight threads undo the same decision at once (a double click, two tabs): exactly one
    wins; then annotators submit and undo in a loop, and the counters always equal the rows."""
    db = ReviewDB(db_url)
    users = [db.add_user(f"und{i}", PASSWORD) for i in range(6)]
    db.enqueue(make_items(40), "b1")
    it = db.next_item(users[0])
    db.submit(users[0], it["id"], "keep")
    results: list[str] = []

    def undo_once():
        try:
            db.undo(users[0], it["id"])
            results.append("ok")
        except (NotFound, Conflict) as e:
            results.append(type(e).__name__)

    threads = [threading.Thread(target=undo_once) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and set(results) <= {"ok", "NotFound"}, results
    problems: list[str] = []

    def work(user, seed):
        rng = random.Random(seed)
        try:
            for _ in range(12):
                x = db.next_item(user)
                if x is None:
                    return
                db.submit(user, x["id"], rng.choice(["keep", "drop"]), flag=rng.random() < 0.3)
                if rng.random() < 0.4:
                    db.undo(user, x["id"])
        except Exception as e:
            problems.append(f"{user.name}: {e!r}")

    threads = [threading.Thread(target=work, args=(usr, i)) for i, usr in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    ds = db.decisions()
    c = db.counters()
    assert c["decisions"] == len(ds) and c["items_done"] == len({d["item_id"] for d in ds})
    assert c["keep"] == sum(d["decision"] == "keep" for d in ds) and c["drop"] == len(ds) - c["keep"]
    assert c["flag"] == sum(d["flag"] for d in ds) and c["items_open"] == 40 - c["items_done"]
    assert sum(a["action"] == "undo" for a in db.audit_page(action="undo", limit=1000)[0]) == db.audit_page(action="undo")[1]
    db.close()


def test_own_decisions_and_the_audit_page_filter_by_user_and_action(review_db):
    u = _users(review_db)
    review_db.enqueue(make_items(4), "b1")
    for name in ("alice", "bob", "alice"):
        x = review_db.next_item(u[name])
        review_db.submit(u[name], x["id"], "keep", caption=f"by {name}")
    mine = review_db.own_decisions(u["alice"])
    assert [d["caption"] for d in mine] == ["by alice", "by alice"] and mine[0]["time"] >= mine[1]["time"]
    assert review_db.own_decisions(u["alice"], limit=1, offset=1)[0]["decision_id"] == mine[1]["decision_id"]
    bobs = review_db.own_decisions(u["bob"])[0]
    assert review_db.own_decisions(u["alice"], item_id=bobs["item_id"]) == []  # never another's
    rows, total = review_db.audit_page(user="alice", action="submit")
    assert total == 2 and {r["user"] for r in rows} == {"alice"} and {r["action"] for r in rows} == {"submit"}
    assert review_db.audit_page(user="nobody'; --")[1] == 0
    rows, total = review_db.audit_page(limit=2, offset=1)
    assert len(rows) == 2 and total == review_db.audit_count()
    assert {"submit", "lease", "enqueue"} <= set(review_db.audit_actions())


def test_reopen_any_own_decision_until_an_apply_has_merged_it(review_db):
    """History re-open (issue #16): any of one's own decisions, however old, comes back (decision
    deleted, counters back, leased to them again, audited) until an apply records that it
    merged it; then 409. Never another's; a gold item whose answer was shown, never."""
    u = _users(review_db)
    items = make_items(4)
    items[3]["gold_answer"] = "keep"
    review_db.enqueue(items, "b1")
    first = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], first["id"], "drop", caption="x")
    second = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], second["id"], "keep")
    assert review_db.applied_through() == 0
    with pytest.raises(NotFound):
        review_db.reopen(u["bob"], first["id"])
    assert review_db.reopen(u["alice"], first["id"]) == {"item_id": first["id"], "undone": "drop", "flag": False}  # not the latest
    assert review_db.get_item(first["id"])["lease_user"] == u["alice"].id
    c = review_db.counters()
    assert (c["decisions"], c["drop"], c["keep"]) == (1, 0, 1)
    assert [a["action"] for a in review_db.audit_tail(3)][0] == "reopen"
    review_db.submit(u["alice"], first["id"], "keep")
    applied = max(d["decision_id"] for d in review_db.decisions())
    review_db.mark_applied(None, applied, version=2)
    review_db.mark_applied(None, applied - 1, version=1)  # an older apply finishing late moves nothing back
    assert review_db.applied_through() == applied and review_db.audit_count("apply") == 2
    for it in (first, second):
        with pytest.raises(Conflict, match="already applied"):
            review_db.reopen(u["alice"], it["id"])
    gold = review_db.next_item(u["alice"], gold_rate=1.0)
    assert gold["gold"]
    review_db.submit(u["alice"], gold["id"], "drop")
    with pytest.raises(Conflict, match="expected answer"):
        review_db.reopen(u["alice"], gold["id"], allow_gold=False)
    with pytest.raises(Conflict, match="expected answer"):
        review_db.undo(u["alice"], gold["id"], allow_gold=False)
    assert review_db.reopen(u["alice"], gold["id"])["undone"] == "drop"  # feedback off: a normal re-open


def test_gold_feedback_is_only_for_ones_own_decided_gold_items(review_db):
    u = _users(review_db)
    items = make_items(2)
    items[0]["gold_answer"] = "drop"
    review_db.enqueue(items, "b1")
    g = review_db.next_item(u["alice"], gold_rate=1.0)
    assert review_db.gold_feedback(u["alice"], g["id"]) is None  # not decided yet: says nothing
    review_db.submit(u["alice"], g["id"], "keep")
    assert review_db.gold_feedback(u["alice"], g["id"]) == "drop"
    assert review_db.gold_feedback(u["bob"], g["id"]) is None
    n = review_db.next_item(u["alice"])
    review_db.submit(u["alice"], n["id"], "keep")
    assert review_db.gold_feedback(u["alice"], n["id"]) is None
