/* deskbot agent console. No inline script (the page's CSP forbids it); every string from
 * a person, an agent or the database is inserted with textContent. */
(function () {
  "use strict";

  var csrf = null;
  var me = null;
  var selected = null;
  var socket = null;
  var attempts = 0;

  function $(id) { return document.getElementById(id); }

  function text(tag, value, cls) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    node.textContent = value === null || value === undefined ? "" : String(value);
    return node;
  }

  function api(method, path, body) {
    var headers = { "Accept": "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-CSRF-Token"] = csrf || "";
    }
    return fetch(path, {
      method: method, headers: headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.status === 401 && path !== "/agent/login") { showLogin(); }
        if (!response.ok) {
          var error = new Error(data.error || ("HTTP " + response.status));
          error.status = response.status;
          throw error;
        }
        return data;
      });
    });
  }

  // ---- login ---------------------------------------------------------------------------

  function showLogin() {
    if (socket) { var s = socket; socket = null; s.close(); }
    me = null;
    $("app").hidden = true;
    $("login").hidden = false;
    api("GET", "/agent/api/login-token").then(function (data) { csrf = data.csrf; });
  }

  $("login-form").addEventListener("submit", function (event) {
    event.preventDefault();
    $("login-error").textContent = "";
    api("POST", "/agent/login", { username: $("username").value, password: $("password").value })
      .then(function () { $("password").value = ""; boot(); })
      .catch(function (error) { $("login-error").textContent = error.message; });
  });

  $("logout").addEventListener("click", function () {
    api("POST", "/agent/logout").then(showLogin, showLogin);
  });

  function boot() {
    api("GET", "/agent/api/me").then(function (data) {
      me = data.agent;
      csrf = data.csrf;
      $("who").textContent = me.name;
      $("login").hidden = true;
      $("app").hidden = false;
      refreshQueue();
      live();
    }).catch(function (error) { if (error.status !== 401) { showLogin(); } });
  }

  // ---- queue and context card ----------------------------------------------------------------

  // At most one queue reload and one conversation reload in flight, and one more after
  // it when something changed meanwhile: a busy desk does not flood the server.
  function paced(load) {
    var busy = false, again = false;
    return function soon() {
      if (busy) { again = true; return; }
      busy = true;
      Promise.resolve(load()).catch(function () {}).then(function () {
        busy = false;
        if (again) { again = false; soon(); }
      });
    };
  }
  var refreshSoon = paced(function () { return refreshQueue(); });
  var reopenSoon = paced(function () { return selected ? load(selected) : null; });

  function refreshQueue() {
    return api("GET", "/agent/api/queue").then(function (data) {
      var list = $("queue");
      list.textContent = "";
      $("queue-empty").hidden = data.queue.length > 0;
      data.queue.forEach(function (item) {
        var li = document.createElement("li");
        var button = document.createElement("button");
        button.type = "button";
        button.className = "queue-item" + (item.id === selected ? " selected" : "");
        button.setAttribute("data-conversation", String(item.id));
        button.appendChild(text("span", "#" + item.id + " · " + item.channel, "q-id"));
        button.appendChild(text("span", item.mine ? "yours" : item.state, "q-state q-" + item.state));
        button.appendChild(text("span", item.reason || "", "q-reason"));
        button.addEventListener("click", function () { open(item.id); });
        li.appendChild(button);
        list.appendChild(li);
      });
    });
  }

  function facts(dl, pairs) {
    dl.textContent = "";
    pairs.forEach(function (pair) {
      if (pair[1] === null || pair[1] === undefined || pair[1] === "") { return; }
      dl.appendChild(text("dt", pair[0]));
      dl.appendChild(text("dd", pair[1]));
    });
  }

  function open(id) {
    selected = id;
    $("action-error").textContent = "";
    return load(id).then(refreshQueue);
  }

  function load(id) {
    return api("GET", "/agent/api/conversations/" + id).then(render)
      .catch(function (error) { $("action-error").textContent = error.message; });
  }

  function render(card) {
    $("card").hidden = false;
    $("card-title").textContent = "Conversation #" + card.conversation_id + " (" + card.channel + ", " + card.state + ")";
    var person = card.person || {};
    facts($("person"), [["Name", person.name || (person.email ? null : "Anonymous visitor")],
      ["Email", person.email || "not verified"], ["Department", person.department],
      ["VIP", person.vip ? "yes" : null]]);
    var t = card.ticket;
    facts($("ticket"), t ? [["Number", t.number], ["Title", t.title], ["Status", t.status],
      ["Priority", "P" + t.priority], ["Why this priority", t.priority_reason],
      ["Escalated because", card.escalation_reason]] : [["Escalated because", card.escalation_reason || "no ticket yet"]]);
    var tried = card.tried || {};
    facts($("tried"), [["Articles offered", (tried.offered_articles || []).join(", ")],
      ["Rejected", (tried.rejected_articles || []).join(", ")], ["Frustration", tried.frustration],
      ["Flagged", card.flagged]]);
    var recent = $("recent");
    recent.textContent = "";
    (card.recent_tickets || []).forEach(function (r) {
      recent.appendChild(text("li", r.number + " · " + r.status + " · " + r.title));
    });
    var log = $("transcript");
    log.textContent = "";
    (card.transcript || []).forEach(function (m) {
      var li = document.createElement("li");
      li.className = "m m-" + m.author_kind + (m.private ? " m-note" : "") + " m-" + m.direction;
      var who = m.private ? "internal note" : m.author_kind;
      li.appendChild(text("span", who + " · " + m.channel + " · " + new Date(m.at).toLocaleTimeString(), "m-meta"));
      li.appendChild(text("p", m.text, "m-text"));
      log.appendChild(li);
    });
    log.scrollTop = log.scrollHeight;
    var mine = card.state === "agent" && me && card.agent_id === me.id;
    $("claim").disabled = !(card.state === "queued" || card.state === "bot");
    $("hand-back").disabled = !mine;
    $("resolve").disabled = !(mine || card.state === "queued");
    $("send-reply").disabled = !mine;
    $("send-note").disabled = !mine;
  }

  function act(path, body) {
    if (selected === null) { return; }
    var id = selected;
    $("action-error").textContent = "";
    return api("POST", "/agent/api/conversations/" + id + "/" + path, body || {})
      .then(function () { return open(id); })
      .catch(function (error) { $("action-error").textContent = error.message; });
  }

  $("claim").addEventListener("click", function () { act("claim"); });
  $("hand-back").addEventListener("click", function () { act("hand-back"); });
  $("resolve").addEventListener("click", function () { act("resolve"); });
  $("reply-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = $("reply-text").value;
    if (!value.trim()) { return; }
    act("reply", { text: value }).then(function () { $("reply-text").value = ""; });
  });
  $("send-note").addEventListener("click", function () {
    var value = $("reply-text").value;
    if (!value.trim()) { return; }
    act("note", { text: value }).then(function () { $("reply-text").value = ""; });
  });

  // ---- live updates ---------------------------------------------------------------------

  function setLive(state, label) {
    $("live").setAttribute("data-state", state);
    $("live").textContent = label;
  }

  function live() {
    if (socket || !me) { return; }
    var url = new URL("/agent/ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    var ws = new WebSocket(url.href);
    socket = ws;
    setLive("connecting", attempts ? "Reconnecting…" : "Connecting…");
    ws.addEventListener("message", function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "hello") { attempts = 0; setLive("online", "Live"); refreshQueue(); }
      if (frame.type === "session_ended") { showLogin(); }
      if (frame.type === "changed") {  // what changed in the last moment
        refreshSoon();
        if (selected && (frame.all || (frame.conversations || []).indexOf(selected) >= 0)) {
          reopenSoon();
        }
      }
      if (frame.type === "resync") {  // live events may have been missed: reload
        refreshQueue();
        if (selected) { open(selected); }
      }
    });
    ws.addEventListener("close", function (event) {
      if (socket !== ws) { return; }
      socket = null;
      if (event.code === 4401 || event.code === 4403) { showLogin(); return; }
      attempts += 1;
      setLive("offline", "Offline, reconnecting…");
      window.setTimeout(live, Math.min(15000, 500 * Math.pow(2, attempts)));
    });
  }

  boot();
})();
