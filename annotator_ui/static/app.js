// Keyboard shortcuts for the review page, image zoom, the invisible-character warning and the
// saved confirmation. Plain JS, no build step; the page works without it (the buttons are
// ordinary form submits). Loaded from this origin only (see the CSP header).
(function () {
  "use strict";
  var DRAFT = "rev-draft"; // {id, caption, tags}: the edits, kept across a refused post
  function button(id) { return document.getElementById(id); }
  function saveDraft() {
    // why: a lost lease, an expired form or a tag that is no concept refuses the post; the
    // annotator's edits must survive it
    var form = document.getElementById("review-form");
    var cap = document.getElementById("caption");
    var tags = document.getElementById("tags");
    if (!form || !cap) { return; }
    var draft = { id: form.dataset.item };
    if (cap.value !== cap.defaultValue) { draft.caption = cap.value; }
    if (tags && tags.value !== tags.defaultValue) { draft.tags = tags.value; }
    try {
      if (draft.caption === undefined && draft.tags === undefined) { sessionStorage.removeItem(DRAFT); }
      else { sessionStorage.setItem(DRAFT, JSON.stringify(draft)); }
    } catch (err) { /* storage off or full: the error page still shows the caption and tags */ }
  }
  function restoreNote(after, id, text) {
    var note = document.createElement("p");
    note.id = id;
    note.className = "note";
    note.textContent = text;
    after.parentNode.insertBefore(note, after.nextSibling);
  }
  function restoreDraft() {
    // the same item again (the lease was renewed or taken again): put the edits back; another
    // item: forget them (a caption belongs to its image)
    var form = document.getElementById("review-form");
    var cap = document.getElementById("caption");
    var tags = document.getElementById("tags");
    var draft = null;
    try { draft = JSON.parse(sessionStorage.getItem(DRAFT) || "null"); } catch (err) { return; }
    if (!form || !cap || !draft) { return; }
    if (draft.id !== form.dataset.item) { sessionStorage.removeItem(DRAFT); return; }
    if (typeof draft.caption === "string" && draft.caption !== cap.value) {
      cap.value = draft.caption;
      restoreNote(cap, "draft-note", "Your edited caption from before was restored.");
    }
    if (tags && typeof draft.tags === "string" && draft.tags !== tags.value) {
      tags.value = draft.tags;
      restoreNote(tags.parentNode, "draft-tags-note", "Your tags from before were restored.");
    }
  }
  function send(id) {
    var form = document.getElementById("review-form");
    var b = button(id);
    if (!form || !b || form.dataset.sent) { return; }
    form.dataset.sent = "1"; // one decision per page, even if a key repeats
    saveDraft();
    form.requestSubmit(b);
  }
  function useFix() {
    var fix = button("use-fix");
    var cap = document.getElementById("caption");
    if (fix && cap) { cap.value = fix.dataset.fix; saveDraft(); }
  }
  // bidi controls and zero-width characters (what the server strips on save, see
  // annotator_ui/filters.py): counted live so a pasted one is announced before saving
  var INVISIBLE = /[\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff]/g;
  function checkInvisible() {
    var cap = document.getElementById("caption");
    var warn = document.getElementById("invisible-warning");
    var count = document.getElementById("invisible-count");
    if (!cap || !warn || !count) { return; }
    var n = (cap.value.match(INVISIBLE) || []).length;
    count.textContent = String(n);
    warn.hidden = n === 0;
    var shown = document.getElementById("caption-shown");
    if (shown) { shown.hidden = n === 0; if (n) { showMarkers(shown, cap.value); } }
  }
  var NAMES = { "\u202a": "LRE", "\u202b": "RLE", "\u202c": "PDF", "\u202d": "LRO", "\u202e": "RLO", "\u2066": "LRI",
    "\u2067": "RLI", "\u2068": "FSI", "\u2069": "PDI", "\u200b": "ZWSP", "\u2060": "WJ", "\ufeff": "BOM" };
  function showMarkers(el, text) {
    // the caption as text nodes with a visible marker per invisible character (never innerHTML)
    el.textContent = "";
    var last = 0;
    text.replace(INVISIBLE, function (ch, at) {
      el.appendChild(document.createTextNode(text.slice(last, at)));
      var mark = document.createElement("span");
      mark.className = "invis";
      mark.title = "U+" + ch.charCodeAt(0).toString(16).toUpperCase();
      mark.textContent = "\u27e8" + NAMES[ch] + "\u27e9";
      el.appendChild(mark);
      last = at + 1;
      return ch;
    });
    el.appendChild(document.createTextNode(text.slice(last)));
  }
  function toggleZoom(e) {
    // fit (scaled down to the box) <-> 100%: the box scrolls to pan; a click zooms at its point
    var box = document.getElementById("image-box");
    var img = document.getElementById("item-image");
    var scroll = document.getElementById("image-scroll");
    var btn = button("btn-zoom");
    if (!box || !img || !scroll) { return; }
    var r = img.getBoundingClientRect();
    var fx = e && e.clientX !== undefined && r.width ? (e.clientX - r.left) / r.width : 0.5;
    var fy = e && e.clientY !== undefined && r.height ? (e.clientY - r.top) / r.height : 0.5;
    var zoomed = box.classList.toggle("zoomed");
    if (btn) { btn.setAttribute("aria-pressed", zoomed ? "true" : "false"); }
    if (zoomed) {
      scroll.scrollLeft = Math.max(0, img.naturalWidth * fx - scroll.clientWidth / 2);
      scroll.scrollTop = Math.max(0, img.naturalHeight * fy - scroll.clientHeight / 2);
    }
  }
  function announceSaved() {
    // re-set the text after load so screen readers announce the live region's message
    var saved = document.getElementById("saved");
    if (!saved || !saved.textContent) { return; }
    // the same nodes put back (the gold feedback is a span with its own colour), not bare text
    var nodes = Array.prototype.slice.call(saved.childNodes);
    saved.textContent = "";
    window.setTimeout(function () { nodes.forEach(function (n) { saved.appendChild(n); }); }, 50);
  }
  function undo() {
    var form = document.getElementById("undo-form");
    if (form && !form.dataset.sent) { form.dataset.sent = "1"; form.submit(); }
  }
  function isTextEntry(t) {
    // a ticked checkbox (a reject reason) keeps focus but takes no letters: shortcuts still work
    if (!t) { return false; }
    if (t.tagName === "TEXTAREA" || t.isContentEditable) { return true; }
    if (t.tagName !== "INPUT") { return false; }
    return ["checkbox", "radio", "button", "submit", "reset"].indexOf((t.type || "").toLowerCase()) < 0;
  }
  document.addEventListener("DOMContentLoaded", function () {
    var fix = button("use-fix");
    if (fix) { fix.addEventListener("click", useFix); }
    var cap = document.getElementById("caption");
    if (cap) { cap.addEventListener("input", saveDraft); cap.addEventListener("input", checkInvisible); }
    var tagField = document.getElementById("tags");
    if (tagField) { tagField.addEventListener("change", saveDraft); }
    var img = document.getElementById("item-image");
    if (img) { img.addEventListener("click", toggleZoom); }
    var zoom = button("btn-zoom");
    if (zoom) { zoom.addEventListener("click", function () { toggleZoom(null); }); }
    announceSaved();
    var form = document.getElementById("review-form");
    if (form) { form.addEventListener("submit", saveDraft); }
    restoreDraft();
    checkInvisible();
  });
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.key === "b" && !isTextEntry(t) && !(e.ctrlKey || e.metaKey || e.altKey) && document.getElementById("undo-form")) {
      e.preventDefault(); undo(); return;
    }
    if (!document.getElementById("review-form")) { return; }
    if (e.key === "Enter" && !(e.ctrlKey || e.metaKey) && t && t.tagName === "INPUT" && t.form && t.form.id === "review-form") {
      // Enter in a one-line field (the tags) would submit the form with its first button,
      // "accept": a decision by habit after typing a tag. Only the keys and buttons decide.
      e.preventDefault(); return;
    }
    if (isTextEntry(t)) {
      if (e.key === "Escape") { t.blur(); e.preventDefault(); }
      else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send("btn-accept"); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var keys = { a: "btn-accept", r: "btn-reject", s: "btn-skip", f: "btn-flag" };
    if (keys[e.key]) { e.preventDefault(); send(keys[e.key]); return; }
    if (e.key === "u") { e.preventDefault(); useFix(); return; }
    if (e.key === "z") { e.preventDefault(); toggleZoom(null); return; }
    if (e.key === "e") {
      e.preventDefault();
      var cap = document.getElementById("caption");
      cap.focus();
      cap.setSelectionRange(cap.value.length, cap.value.length);
    }
  });
})();
// Tag suggestions: the tags field stores concept ids; typing a name (English or Chinese) after
// the last comma asks /api/tags and offers concepts to pick; the pick puts the id in the field.
(function () {
  "use strict";
  var timer = null, active = -1;
  function parts(input) { return input.value.split(","); }
  function lastPart(input) { var p = parts(input); return p[p.length - 1].trim(); }
  function list() { return document.getElementById("tag-suggest"); }
  function hide(input) {
    var ul = list();
    if (ul) { ul.hidden = true; ul.textContent = ""; }
    input.setAttribute("aria-expanded", "false");
    active = -1;
  }
  function pick(input, id) {
    var p = parts(input).map(function (s) { return s.trim(); });
    p[p.length - 1] = id;
    input.value = p.filter(function (s) { return s; }).join(", ") + ", ";
    hide(input);
    input.focus();
  }
  function option(input, tag, i) {
    // text nodes only (labels come from data): never innerHTML
    var li = document.createElement("li");
    li.id = "tag-opt-" + i;
    li.setAttribute("role", "option");
    li.dataset.id = tag.id;
    li.appendChild(document.createTextNode(tag.en || tag.id));
    if (tag.zh) { var zh = document.createElement("span"); zh.lang = "zh"; zh.textContent = " \u00b7 " + tag.zh; li.appendChild(zh); }
    var id = document.createElement("small"); id.textContent = " " + tag.id; li.appendChild(id);
    // mousedown, not click: the input keeps focus and the list is not hidden by a blur first
    li.addEventListener("mousedown", function (e) { e.preventDefault(); pick(input, tag.id); });
    return li;
  }
  function show(input, q, tags) {
    var ul = list();
    if (!ul || lastPart(input) !== q) { return; } // a newer keystroke wins
    ul.textContent = "";
    tags.forEach(function (t, i) { ul.appendChild(option(input, t, i)); });
    ul.hidden = tags.length === 0;
    input.setAttribute("aria-expanded", tags.length ? "true" : "false");
    active = -1;
  }
  function ask(input) {
    var q = lastPart(input);
    if (!q) { hide(input); return; }
    fetch("/api/tags?limit=8&q=" + encodeURIComponent(q), { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : { tags: [] }; })
      .then(function (body) { show(input, q, body.tags || []); })
      .catch(function () { hide(input); });
  }
  function move(input, step) {
    var items = list().querySelectorAll("li");
    if (!items.length) { return; }
    active = (active + step + items.length) % items.length;
    items.forEach(function (li, i) { li.setAttribute("aria-selected", i === active ? "true" : "false"); });
    input.setAttribute("aria-activedescendant", items[active].id);
    items[active].scrollIntoView({ block: "nearest" });
  }
  function onKey(e) {
    var input = e.target, ul = list();
    if (!ul || ul.hidden) { return; }
    if (e.key === "ArrowDown" || e.key === "ArrowUp") { e.preventDefault(); move(input, e.key === "ArrowDown" ? 1 : -1); return; }
    if (e.key === "Enter" && !(e.ctrlKey || e.metaKey)) {
      // Enter picks (the first suggestion when none is highlighted) instead of submitting the form
      e.preventDefault();
      var li = ul.querySelectorAll("li")[Math.max(active, 0)];
      if (li) { pick(input, li.dataset.id); }
      return;
    }
    if (e.key === "Escape") { hide(input); }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var input = document.getElementById("tags");
    if (!input || !list()) { return; }
    input.addEventListener("input", function () { window.clearTimeout(timer); timer = window.setTimeout(function () { ask(input); }, 120); });
    input.addEventListener("keydown", onKey);
    input.addEventListener("blur", function () { hide(input); });
  });
})();
