/* deskbot web chat widget: dependency-free, embedded with
 *   <script src="https://desk.example.com/webchat/widget.js" data-deskbot defer></script>
 * Every person-supplied or bot-supplied string is inserted with textContent; the only
 * HTML inserted is the server's sanitised rendering of a bot or agent message. */
(function () {
  "use strict";

  var script = document.currentScript || document.querySelector("script[data-deskbot]");
  if (!script || window.__deskbotWidget) { return; }
  window.__deskbotWidget = true;

  var base = new URL(script.src, window.location.href);
  var origin = base.origin;
  var title = script.getAttribute("data-title") || "IT service desk";
  var idEmail = script.getAttribute("data-email") || null;
  var idHash = script.getAttribute("data-hash") || null;
  var STORE = "deskbot.webchat.v1";
  var PENDING = "deskbot.webchat.pending.v1";

  var state = {
    session: null,
    ws: null,
    connected: false,
    attempts: 0,
    seen: {},
    pending: {},
    typingTimer: null,
    retryTimer: null,
    stopped: false
  };

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function load(key) {
    try { return JSON.parse(window.localStorage.getItem(key) || "null"); } catch (e) { return null; }
  }

  function save(key, value) {
    try { window.localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* private mode */ }
  }

  function newClientId() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  // ---- the DOM -------------------------------------------------------------------------

  var css = el("link", { rel: "stylesheet", href: new URL("widget.css", base).href });
  document.head.appendChild(css);

  var root = el("div", { "class": "dkb-root", "data-deskbot-widget": "" });
  var launcher = el("button", {
    type: "button", "class": "dkb-launcher", "aria-expanded": "false",
    "aria-controls": "dkb-panel"
  }, "Chat with IT");
  var panel = el("section", {
    id: "dkb-panel", "class": "dkb-panel", role: "dialog", "aria-label": title, hidden: ""
  });
  var header = el("header", { "class": "dkb-header" });
  var heading = el("h2", { "class": "dkb-title" }, title);
  var status = el("span", { "class": "dkb-status", "data-state": "connecting", role: "status" },
    "Connecting…");
  var close = el("button", { type: "button", "class": "dkb-close", "aria-label": "Close chat" }, "×");
  header.appendChild(heading);
  header.appendChild(status);
  header.appendChild(close);

  var log = el("div", {
    "class": "dkb-log", role: "log", "aria-live": "polite", "aria-label": "Conversation"
  });
  var typing = el("div", { "class": "dkb-typing", hidden: "", "aria-label": "The desk is typing" });
  typing.appendChild(el("span", { "class": "dkb-dot" }));
  typing.appendChild(el("span", { "class": "dkb-dot" }));
  typing.appendChild(el("span", { "class": "dkb-dot" }));
  var quick = el("div", { "class": "dkb-quick" });

  var form = el("form", { "class": "dkb-form" });
  var label = el("label", { "for": "dkb-input", "class": "dkb-visually-hidden" }, "Message");
  var input = el("textarea", {
    id: "dkb-input", "class": "dkb-input", rows: "1", maxlength: "4000",
    placeholder: "Ask the IT desk…", autocomplete: "off"
  });
  var send = el("button", { type: "submit", "class": "dkb-send" }, "Send");
  form.appendChild(label);
  form.appendChild(input);
  form.appendChild(send);

  panel.appendChild(header);
  panel.appendChild(log);
  panel.appendChild(typing);
  panel.appendChild(quick);
  panel.appendChild(form);
  root.appendChild(panel);
  root.appendChild(launcher);
  document.body.appendChild(root);

  function setStatus(kind, text) {
    status.setAttribute("data-state", kind);
    status.textContent = text;
  }

  function open(show) {
    if (show) { panel.removeAttribute("hidden"); } else { panel.setAttribute("hidden", ""); }
    launcher.setAttribute("aria-expanded", show ? "true" : "false");
    if (show) { input.focus(); log.scrollTop = log.scrollHeight; }
  }

  launcher.addEventListener("click", function () { open(panel.hasAttribute("hidden")); });
  close.addEventListener("click", function () { open(false); launcher.focus(); });
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { open(false); launcher.focus(); }
  });

  function showTyping(on) {
    window.clearTimeout(state.typingTimer);
    if (on) {
      typing.removeAttribute("hidden");
      state.typingTimer = window.setTimeout(function () { showTyping(false); }, 15000);
    } else {
      typing.setAttribute("hidden", "");
    }
  }

  function retireChoices() {
    Array.prototype.forEach.call(log.querySelectorAll(".dkb-choice"), function (b) {
      b.disabled = true;
    });
    quick.textContent = "";
  }

  function scrollDown() { log.scrollTop = log.scrollHeight; }

  function renderVisitor(text, clientId, sent) {
    var bubble = el("div", { "class": "dkb-msg dkb-me", "data-client-id": clientId || "" });
    bubble.appendChild(el("p", {}, text));
    var mark = el("span", { "class": "dkb-receipt" }, sent ? "Sent" : "Sending…");
    bubble.appendChild(mark);
    log.appendChild(bubble);
    scrollDown();
    return bubble;
  }

  function renderReply(msg) {
    var key = msg.message_id || ("o" + msg.id);
    if (state.seen[key]) { return; }
    state.seen[key] = true;
    var who = msg.author === "agent" ? "agent" : (msg.author === "system" ? "system" : "bot");
    var bubble = el("div", { "class": "dkb-msg dkb-" + who, "data-message-id": String(key) });
    var body = el("div", { "class": "dkb-body" });
    if (typeof msg.html === "string") {
      body.innerHTML = msg.html; // sanitised by the server: raw HTML escaped, safe links only
    } else {
      body.textContent = msg.markdown || "";
    }
    bubble.appendChild(body);
    if (msg.buttons && msg.buttons.length) {
      var row = el("div", { "class": "dkb-buttons" });
      msg.buttons.forEach(function (b) {
        var button = el("button", { type: "button", "class": "dkb-choice" }, b.label);
        button.addEventListener("click", function () { submit(b.label, b.value); });
        row.appendChild(button);
      });
      bubble.appendChild(row);
    }
    log.appendChild(bubble);
    quick.textContent = "";
    (msg.quick_replies || []).forEach(function (text) {
      var chip = el("button", { type: "button", "class": "dkb-chip dkb-choice" }, text);
      chip.addEventListener("click", function () { submit(text, null); });
      quick.appendChild(chip);
    });
    scrollDown();
  }

  // ---- sending, acknowledgement, resend ---------------------------------------------------

  function persistPending() {
    var list = Object.keys(state.pending).map(function (id) { return state.pending[id].frame; });
    save(PENDING, list);
  }

  function transmit(frame) {
    if (state.ws && state.connected) {
      try { state.ws.send(JSON.stringify(frame)); } catch (e) { /* resent on reconnect */ }
    }
  }

  function submit(text, button) {
    text = (text || "").trim();
    if (!text && !button) { return; }
    retireChoices();
    var frame = { type: "message", client_id: newClientId(), text: text };
    if (button) { frame.button = button; }
    var bubble = renderVisitor(text, frame.client_id, false);
    state.pending[frame.client_id] = { frame: frame, bubble: bubble };
    persistPending();
    showTyping(true);
    transmit(frame);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (!text.trim()) { return; }
    input.value = "";
    submit(text, null);
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit"));
    }
  });

  function acknowledged(clientId) {
    var item = state.pending[clientId];
    if (!item) { return; }
    delete state.pending[clientId];
    persistPending();
    var mark = item.bubble.querySelector(".dkb-receipt");
    if (mark) { mark.textContent = "Sent"; }
  }

  function failed(clientId, reason) {
    var item = state.pending[clientId];
    if (!item) { return; }
    delete state.pending[clientId];
    persistPending();
    showTyping(false);
    item.bubble.classList.add("dkb-failed");
    var mark = item.bubble.querySelector(".dkb-receipt");
    if (mark) { mark.textContent = reason; }
  }

  function resendPending() {
    Object.keys(state.pending).forEach(function (id) { transmit(state.pending[id].frame); });
  }

  function onFrame(frame) {
    if (frame.type === "hello") {
      state.attempts = 0;
      setStatus("online", "Online");
      resendPending();
    } else if (frame.type === "ack") {
      acknowledged(frame.client_id);
    } else if (frame.type === "message") {
      showTyping(false);
      renderReply(frame);
    } else if (frame.type === "resync") {
      // replies may have been missed while the server's nodes lost touch: read the
      // history again; renderReply skips what is already shown
      restoreHistory().catch(function () { /* the next reconnect restores it */ });
    } else if (frame.type === "error") {
      if (frame.code === "slow_down") {
        setStatus("slow", "Slow down a little…");
        window.setTimeout(function () {
          if (state.pending[frame.client_id]) { transmit(state.pending[frame.client_id].frame); }
          if (state.connected) { setStatus("online", "Online"); }
        }, 4000);
      } else if (frame.code === "too_long") {
        failed(frame.client_id, "Too long: up to " + frame.limit + " characters");
      } else if (frame.client_id) {
        failed(frame.client_id, frame.code === "server_error" ? "Not sent, try again" : "Not sent");
      }
    }
  }

  // ---- session, history, connection ------------------------------------------------------

  function newSession() {
    var body = {};
    if (idEmail && idHash) { body = { email: idEmail, hash: idHash }; }
    return fetch(new URL("/webchat/session", origin).href, {
      method: "POST",
      headers: { "Content-Type": "text/plain" },
      body: JSON.stringify(body),
      credentials: "omit"
    }).then(function (response) {
      if (!response.ok) { throw new Error("session " + response.status); }
      return response.json();
    }).then(function (data) {
      var session = { visitor: data.visitor, token: data.token, email: idEmail };
      save(STORE, session);
      save(PENDING, []);
      return session;
    });
  }

  function ensureSession() {
    var stored = load(STORE);
    if (stored && stored.visitor && stored.token && (stored.email || null) === idEmail) {
      return Promise.resolve(stored);
    }
    return newSession();
  }

  function restoreHistory() {
    var url = new URL("/webchat/history", origin);
    url.searchParams.set("visitor", state.session.visitor);
    url.searchParams.set("token", state.session.token);
    return fetch(url.href, { credentials: "omit" }).then(function (response) {
      if (response.status === 404) { return null; }
      return response.ok ? response.json() : { messages: [] };
    }).then(function (data) {
      if (data === null) { return "expired"; }
      var mine = {};
      Array.prototype.forEach.call(log.querySelectorAll(".dkb-me"), function (b) {
        mine[b.getAttribute("data-client-id")] = true;
      });
      data.messages.forEach(function (m) {
        if (m.direction === "in") {
          if (m.client_id && mine[m.client_id]) { return; }
          if (m.client_id && state.pending[m.client_id]) { acknowledged(m.client_id); return; }
          renderVisitor(m.markdown, m.client_id, true);
          if (m.client_id) { mine[m.client_id] = true; }
        } else {
          renderReply(m);
        }
      });
      var last = log.lastElementChild;
      if (last && !last.querySelector(".dkb-choice")) { retireChoices(); }
      Array.prototype.forEach.call(log.querySelectorAll(".dkb-buttons"), function (row) {
        if (row.parentNode !== log.lastElementChild) {
          Array.prototype.forEach.call(row.querySelectorAll("button"), function (b) { b.disabled = true; });
        }
      });
      return "ok";
    });
  }

  function connect() {
    if (state.stopped) { return; }
    var url = new URL("/webchat/ws", origin);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("visitor", state.session.visitor);
    url.searchParams.set("token", state.session.token);
    setStatus("connecting", state.attempts ? "Reconnecting…" : "Connecting…");
    var ws = new WebSocket(url.href);
    state.ws = ws;
    ws.addEventListener("open", function () { state.connected = true; });
    ws.addEventListener("message", function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      onFrame(frame);
    });
    ws.addEventListener("close", function (event) {
      state.connected = false;
      if (state.ws !== ws) { return; }
      if (event.code === 4403) {
        state.stopped = true;
        setStatus("offline", "Chat is not available on this page");
        return;
      }
      if (event.code === 4401 || event.code === 1008) {
        save(STORE, null);
        start();
        return;
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    state.attempts += 1;
    var delay = Math.min(15000, 500 * Math.pow(2, state.attempts)) * (0.5 + Math.random() / 2);
    setStatus("offline", "Offline, reconnecting…");
    window.clearTimeout(state.retryTimer);
    state.retryTimer = window.setTimeout(function () {
      restoreHistory().then(connect, connect);
    }, delay);
  }

  function start() {
    ensureSession().then(function (session) {
      state.session = session;
      (load(PENDING) || []).forEach(function (frame) {
        if (frame && frame.client_id && !state.pending[frame.client_id]) {
          state.pending[frame.client_id] = { frame: frame, bubble: renderVisitor(frame.text, frame.client_id, false) };
        }
      });
      return restoreHistory();
    }).then(function (result) {
      if (result === "expired") {
        save(STORE, null);
        return newSession().then(function (session) { state.session = session; });
      }
      return null;
    }).then(connect).catch(function () {
      setStatus("offline", "Offline, retrying…");
      state.attempts += 1;
      window.setTimeout(start, Math.min(15000, 1000 * Math.pow(2, state.attempts)));
    });
  }

  window.addEventListener("online", function () {
    if (!state.connected && state.session) { window.clearTimeout(state.retryTimer); connect(); }
  });

  start();
})();
