// berth's status page refreshes itself in place: every few seconds it
// fetches the page again (server-rendered, like the first time) and swaps
// the figures in. Nothing else on the page needs script; without it the
// page is a static snapshot.
(function () {
  "use strict";
  var every = 2000;
  var note = document.getElementById("refresh");
  function later() { window.setTimeout(refresh, every); }
  function refresh() {
    fetch(window.location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("status");
        var current = document.getElementById("status");
        if (fresh && current) { current.replaceWith(fresh); }
        note.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { note.textContent = "not updating: " + e.message; })
      .then(later);
  }
  later();
})();
