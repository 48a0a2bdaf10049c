// The console's live parts: running ages, live refresh over Server-Sent Events, the alert
// sound with its mute toggle. No framework; the server renders every fragment (escaped).
"use strict";
(function () {
  const page = document.body.dataset.page;
  const state = (window.alarmgwConsole = { played: 0, playCalls: 0, refreshes: 0, seen: null });

  function pad(n) { return String(n).padStart(2, "0"); }
  function age(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    return s >= 3600
      ? Math.floor(s / 3600) + ":" + pad(Math.floor(s / 60) % 60) + ":" + pad(s % 60)
      : Math.floor(s / 60) + ":" + pad(s % 60);
  }
  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll("td.age[data-since]").forEach(function (td) {
      td.textContent = age(now - parseFloat(td.dataset.since));
    });
  }

  const audio = document.getElementById("alert");
  const mute = document.getElementById("mute");
  function muted() { return localStorage.getItem("alarmgw-muted") === "1"; }
  function showMute() {
    if (mute) { mute.textContent = muted() ? mute.dataset.off : mute.dataset.on; mute.classList.toggle("muted", muted()); }
  }
  if (mute) {
    mute.addEventListener("click", function () {
      localStorage.setItem("alarmgw-muted", muted() ? "0" : "1");
      showMute();
    });
    showMute();
  }
  function alert() {
    if (!audio || muted()) { return; }
    state.playCalls += 1;
    const played = audio.play();
    if (played && played.then) {
      played.then(function () { state.played += 1; }, function () { /* autoplay refused */ });
    }
  }

  function newIds() {
    const ids = new Set();
    document.querySelectorAll("tr.alarm[data-id]").forEach(function (tr) {
      if (tr.classList.contains("status-new")) { ids.add(tr.dataset.id); }
    });
    return ids;
  }

  function refresh(target) {
    const box = document.getElementById(target);
    if (!box) { return Promise.resolve(); }
    return fetch(box.dataset.fragment, { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401 || r.redirected) { window.location = "/login"; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html === null) { return; }
      box.innerHTML = html;
      state.refreshes += 1;
      tick();
      if (page === "board") {
        const ids = newIds();
        let fresh = false;
        ids.forEach(function (id) { if (!state.seen.has(id)) { fresh = true; } });
        state.seen = ids;
        if (fresh) { alert(); }
      }
    });
  }

  // One fetch at a time: a notice during a fetch asks for one more after it.
  let inflight = false, again = false;
  function soon(target) {
    if (inflight) { again = true; return; }
    inflight = true;
    refresh(target).finally(function () {
      inflight = false;
      if (again) { again = false; soon(target); }
    });
  }

  if (page === "board" || page === "fleet") {
    const target = page === "board" ? "board-body" : "fleet-body";
    if (page === "board") { state.seen = newIds(); if (state.seen.size) { alert(); } }
    const live = document.getElementById("live");
    const source = new EventSource("/events");
    source.addEventListener("open", function () { if (live) { live.classList.remove("down"); } });
    source.addEventListener("error", function () { if (live) { live.classList.add("down"); } });
    source.addEventListener(page === "board" ? "alarms" : "fleet", function () { soon(target); });
    setInterval(function () { refresh(target); }, 15000);
    // The alert repeats while an alarm is still unacknowledged.
    if (page === "board") {
      setInterval(function () { if (newIds().size) { alert(); } }, 10000);
    }
    setInterval(tick, 1000);
  }
})();
