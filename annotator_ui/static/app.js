// Keyboard shortcuts for the review page, image zoom, the invisible-character warning and the
// saved confirmation. Plain JS, no build step; the page works without it (the buttons are
// ordinary form submits). Loaded from this origin only (see the CSP header).
(function () {
  "use strict";
  var DRAFT = "rev-draft"; // {id, caption}: the caption being edited, kept across a refused post
  function button(id) { return document.getElementById(id); }
  function saveDraft() {
    // why: a lost lease or an expired form refuses the post; the annotator's edit must survive it
    var form = document.getElementById("review-form");
    var cap = document.getElementById("caption");
    if (!form || !cap) { return; }
    try {
      if (cap.value === cap.defaultValue) { sessionStorage.removeItem(DRAFT); }
      else { sessionStorage.setItem(DRAFT, JSON.stringify({ id: form.dataset.item, caption: cap.value })); }
    } catch (err) { /* storage off or full: the error page still shows the caption */ }
  }
  function restoreDraft() {
    // the same item again (the lease was renewed or taken again): put the edit back; another
    // item: forget it (a caption belongs to its image)
    var form = document.getElementById("review-form");
    var cap = document.getElementById("caption");
    var draft = null;
    try { draft = JSON.parse(sessionStorage.getItem(DRAFT) || "null"); } catch (err) { return; }
    if (!form || !cap || !draft) { return; }
    if (draft.id !== form.dataset.item) { sessionStorage.removeItem(DRAFT); return; }
    if (draft.caption !== cap.value) {
      cap.value = draft.caption;
      var note = document.createElement("p");
      note.id = "draft-note";
      note.className = "note";
      note.textContent = "Your edited caption from before was restored.";
      cap.parentNode.insertBefore(note, cap.nextSibling);
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
    var text = saved.textContent;
    saved.textContent = "";
    window.setTimeout(function () { saved.textContent = text; }, 50);
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
