// msante web client: sign-in (OIDC code flow with PKCE), care circles, live conversation, alerts.
// Plain JavaScript, no build step. The protocol is described in docs/instant-protocol.md.
"use strict";

const CLIENT_ID = "msante-web";
const REDIRECT_URI = `${location.origin}/`;
const TYPING_EVERY_MS = 2000;   // the server accepts one typing notice per 2 s per circle
const TYPING_SHOWN_MS = 4000;
const RECONNECT_MAX_MS = 30000;
const READ_EVERY_MS = 500;
const TITLE = document.title;
const RELATIVE_UNDER_MS = 60 * 60 * 1000;   // within the hour "il y a 5 minutes", then the time of day

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
};
const timeFmt = new Intl.DateTimeFormat("fr-FR", { hour: "2-digit", minute: "2-digit" });
const dateTimeFmt = new Intl.DateTimeFormat("fr-FR", { dateStyle: "short", timeStyle: "short" });
const birthFmt = new Intl.DateTimeFormat("fr-FR", { dateStyle: "long", timeZone: "UTC" });
const dayFmt = new Intl.DateTimeFormat("fr-FR", { weekday: "long", day: "numeric", month: "long" });
const dayYearFmt = new Intl.DateTimeFormat("fr-FR", { weekday: "long", day: "numeric", month: "long", year: "numeric" });
const shortDayFmt = new Intl.DateTimeFormat("fr-FR", { day: "numeric", month: "short" });
const relativeFmt = new Intl.RelativeTimeFormat("fr", { numeric: "auto" });

const state = {
  session: null,            // {access, refresh, expiresAt}
  me: null,                 // {id, name}
  ws: null, reconnectMs: 1000, refreshTimer: null,
  circles: new Map(),       // id -> {summary, unread, head, lastSeq, firstSeq, last, receipts, members}
  muted: new Set(),         // circles whose messages raise no notification (this browser, localStorage)
  current: null,            // the circle shown
  denied: new Set(),        // circles the server refused to this person
  outgoing: new Map(),      // client_id -> {circle, text, reply_to}: posts not yet acknowledged
  replyTo: null,            // the message the composer answers ({seq, author, text}), if any
  attached: [],             // documents uploaded for the next post ({circle, id, name, type, size})
  maxAttachment: 10 * 1024 * 1024,   // bytes; the server's own figure comes in the welcome
  alerts: new Map(),        // id -> alert
  boxes: null,              // a promise of the addresses whose INBOX this person may read (/api/mailboxes)
  routed: "", mailFrom: "", // the hash shown before this one; the circle a mail was opened from
  typingSentAt: 0, typingTimers: new Map(),
  threadScroll: 0,          // where the thread was when the alerts covered it (0: at its latest message)
  nextId: 1, requests: new Map(),   // request id -> what it was for
};

// --- sign-in: authorization code flow with PKCE (RFC 7636, S256) --------------------------------

const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const randomString = (n) => base64url(crypto.getRandomValues(new Uint8Array(n)));

async function discovery() {
  const response = await fetch("/.well-known/openid-configuration");
  if (!response.ok) throw new Error("discovery");
  return response.json();
}

async function signIn() {
  const config = await discovery();
  const verifier = randomString(48);
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const expected = randomString(24);
  sessionStorage.setItem("pkce", JSON.stringify({ verifier, state: expected, hash: location.hash }));
  const params = new URLSearchParams({
    response_type: "code", client_id: CLIENT_ID, redirect_uri: REDIRECT_URI, scope: "openid",
    state: expected, code_challenge: challenge, code_challenge_method: "S256", acr_values: "eidas1",
    nonce: randomString(16),
  });
  location.assign(`${config.authorization_endpoint}?${params}`);
}

async function tokenRequest(fields) {
  const config = await discovery();
  const response = await fetch(config.token_endpoint, {
    method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ client_id: CLIENT_ID, ...fields }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error_description || body.error || "token");
  const session = { access: body.access_token, refresh: body.refresh_token,
                    expiresAt: Date.now() + body.expires_in * 1000 };
  sessionStorage.setItem("session", JSON.stringify(session));   // this tab only, gone when it closes
  state.session = session;
  scheduleRefresh();
  return session;
}

async function finishSignIn(query) {
  const pending = JSON.parse(sessionStorage.getItem("pkce") || "null");
  sessionStorage.removeItem("pkce");
  history.replaceState(null, "", `/${pending?.hash || ""}`);
  if (query.get("error")) throw new Error(query.get("error_description") || query.get("error"));
  if (!pending || query.get("state") !== pending.state) throw new Error("réponse de connexion inattendue");
  await tokenRequest({ grant_type: "authorization_code", code: query.get("code"), redirect_uri: REDIRECT_URI,
                       code_verifier: pending.verifier });
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  const lifetime = state.session.expiresAt - Date.now();
  state.refreshTimer = setTimeout(refreshToken, Math.max(1000, lifetime * 0.8));
}

async function refreshToken() {
  try {
    await tokenRequest({ grant_type: "refresh_token", refresh_token: state.session.refresh });
    send({ type: "auth", v: 1, token: state.session.access });    // same connection, same place
  } catch {
    signOut("Votre session a expiré : reconnectez-vous.");
  }
}

function signOut(message) {
  sessionStorage.removeItem("session");
  state.session = null;
  state.boxes = null;
  if (state.ws) state.ws.close(1000);
  showSignIn(message);
}

// --- the websocket ------------------------------------------------------------------------------

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
}

function request(frame, purpose) {
  const id = `r${state.nextId++}`;
  state.requests.set(id, purpose);
  send({ ...frame, id });
}

function connect() {
  const ws = new WebSocket(`wss://${location.host}/ws`, ["msante.v1"]);
  state.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", v: 1, token: state.session.access }));
  ws.onmessage = (event) => receive(JSON.parse(event.data));
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    setStatus(false);
    if (!state.session) return;
    if (event.code === 4003) { signOut("Connexion refusée : reconnectez-vous."); return; }
    if (event.code === 4029) { notify("Trop de connexions ouvertes : fermez un autre onglet."); return; }
    const wait = event.code === 4001 ? 0 : state.reconnectMs;       // 4001: fresh token, then resume
    state.reconnectMs = Math.min(state.reconnectMs * 2, RECONNECT_MAX_MS);
    setTimeout(async () => {
      if (event.code === 4001 || state.session.expiresAt < Date.now() + 5000) await refreshToken();
      if (state.session) connect();
    }, wait);
  };
}

function receive(frame) {
  const purpose = frame.id ? state.requests.get(frame.id) : undefined;
  if (frame.id) state.requests.delete(frame.id);
  switch (frame.type) {
    case "welcome": return welcome(frame);
    case "subscribed": return subscribed(frame);
    case "unsubscribed": return unsubscribed(frame);
    case "message": return message(frame);
    case "ack": return acknowledged(frame);
    case "history": return historyPage(frame, purpose);
    case "search": return searchResults(frame, purpose);
    case "read": return readMarker(frame);
    case "receipt": return receipt(frame);
    case "notice": return noticeChanged(frame);
    case "typing": return typing(frame);
    case "presence": return presence(frame.circle, frame.user, frame.state);
    case "alert": return alert(frame.alert);
    case "error": return error(frame, purpose);
  }
}

function welcome(frame) {
  const resumed = state.me !== null;
  state.me = frame.user;
  state.admin = frame.admin === true;
  state.maxAttachment = frame.limits.max_attachment || state.maxAttachment;
  state.reconnectMs = 1000;
  setStatus(true);
  $("me").textContent = frame.user.name;
  $("whoami").textContent = `Connecté(e) : ${frame.user.name}`;
  $("signout").hidden = false;
  $("alerts-toggle").hidden = false;
  state.muted = new Set(JSON.parse(localStorage.getItem(mutedKey()) || "[]"));
  for (const summary of frame.circles) {
    const known = state.circles.get(summary.id);
    state.circles.set(summary.id, { ...(known || {}), summary, unread: summary.unread,
                                    last: summary.last_message || known?.last || null });
  }
  for (const [id, circle] of [...state.circles]) {
    if (!frame.circles.some((c) => c.id === id)) state.circles.delete(id);
    forgetNotices(circle);   // receipts may have changed while no `notice` frame could come
  }
  renderCircles();
  for (const [id, circle] of state.circles) {
    const after = circle.lastSeq;   // known: resume exactly after it; unknown: from now on
    request(after === undefined ? { type: "subscribe", circle: id } : { type: "subscribe", circle: id, after },
            { circle: id });
  }
  if (state.current !== null && (!resumed || !state.circles.has(state.current))) openCircle(state.current);
  if (resumed) for (const [clientId, post] of state.outgoing) {           // a retry stores nothing twice
    request({ type: "post", circle: post.circle, client_id: clientId, text: post.text,
              ...(post.reply_to ? { reply_to: post.reply_to.seq } : {}),
              ...(post.attachments.length ? { attachments: post.attachments.map((a) => a.id) } : {}) },
            { circle: post.circle });
  }
}

function subscribed(frame) {
  const circle = state.circles.get(frame.circle) || { summary: null };
  circle.head = frame.head;
  circle.unread = frame.unread;
  if (circle.lastSeq === undefined) circle.lastSeq = frame.head;
  circle.present = new Map(frame.present.map((p) => [p.user.id, p.state]));
  circle.receipts = new Map(frame.receipts.map((r) => [r.user.id, r.seq]));
  state.circles.set(frame.circle, circle);
  state.denied.delete(frame.circle);
  renderCircles();
  if (frame.circle === state.current) {
    renderMembers();
    renderReceipts();
    if (circle.firstSeq === undefined) request({ type: "history", circle: frame.circle }, { circle: frame.circle });
  }
}

function unsubscribed(frame) {
  if (frame.reason !== "removed") return;
  state.circles.delete(frame.circle);
  state.denied.add(frame.circle);
  renderCircles();
  if (frame.circle === state.current) showDenied("Vous ne faites plus partie de ce cercle de soins.");
}

function message(frame) {
  const circle = state.circles.get(frame.circle);
  if (!circle) return;
  const isNew = circle.head === undefined || frame.seq > circle.head;
  circle.lastSeq = Math.max(circle.lastSeq || 0, frame.seq);
  if (isNew) circle.head = frame.seq;
  state.outgoing.delete(frame.client_id);
  if (!circle.last || frame.seq >= circle.last.seq) {
    circle.last = { seq: frame.seq, author: frame.author, text: frame.text.slice(0, 200), at: frame.at };
  }
  const shown = frame.circle === state.current && document.visibilityState === "visible";
  if (isNew && frame.author.id !== state.me.id && !shown) {
    circle.unread += 1;
    if (document.visibilityState !== "visible") notifyMessage(frame, circle);
  }
  if (frame.circle === state.current) {
    appendMessages([frame]);
    markRead(frame.circle);
    if ($("typing").textContent.startsWith(frame.author.name)) $("typing").textContent = "";
  }
  renderCircles();
}

// A notification says who wrote in which circle, never what: it shows on lock screens and in
// notification centres, where health data has no place.
function notifyMessage(frame, circle) {
  if (!("Notification" in window) || Notification.permission !== "granted" || state.muted.has(frame.circle)) return;
  const shown = new Notification(`Nouveau message de ${frame.author.name}`, {
    body: circle.summary ? `Cercle de soins de ${patientName(circle.summary.patient)}` : "Cercle de soins",
    tag: `cercle-${frame.circle}`,
  });
  shown.onclick = () => { window.focus(); location.hash = `#/cercle/${frame.circle}`; shown.close(); };
}

function receipt(frame) {
  const circle = state.circles.get(frame.circle);
  if (!circle || !circle.receipts) return;
  circle.receipts.set(frame.user.id, Math.max(circle.receipts.get(frame.user.id) || 0, frame.seq));
  if (frame.circle === state.current) renderReceipts();
}

function acknowledged(frame) {     // the ack comes before the message itself: the pending item becomes the message
  const sent = state.outgoing.get(frame.client_id);
  state.outgoing.delete(frame.client_id);
  const pending = document.querySelector(`#messages li.pending[data-client-id="${CSS.escape(frame.client_id)}"]`);
  if (pending && sent) {
    pending.replaceWith(messageItem({ circle: frame.circle, seq: frame.seq, client_id: frame.client_id, text: sent.text,
                                      at: frame.at, author: state.me, reply_to: sent.reply_to,
                                      attachments: sent.attachments }));
    renderReceipts();
  }
}

function historyPage(frame, purpose) {
  const circle = state.circles.get(frame.circle);
  if (!circle || frame.circle !== state.current) return;
  if (frame.messages.length) {
    circle.firstSeq = frame.messages[0].seq;
    circle.lastSeq = Math.max(circle.lastSeq || 0, frame.messages.at(-1).seq);
  } else if (circle.firstSeq === undefined) {
    circle.firstSeq = 0;
  }
  if (purpose && purpose.older) prependMessages(frame.messages); else appendMessages(frame.messages);
  $("older").hidden = !frame.more;
  markRead(frame.circle);
}

function readMarker(frame) {
  const circle = state.circles.get(frame.circle);
  if (circle) { circle.unread = frame.unread; renderCircles(); }
}

function typing(frame) {
  if (frame.circle !== state.current) return;
  const line = $("typing");
  line.textContent = `${frame.user.name} écrit…`;
  clearTimeout(state.typingTimers.get(frame.circle));
  state.typingTimers.set(frame.circle, setTimeout(() => { line.textContent = ""; }, TYPING_SHOWN_MS));
}

function presence(circleId, user, presenceState) {
  const circle = state.circles.get(circleId);
  if (!circle || !circle.present) return;
  circle.present.set(user.id, presenceState);
  if (circleId === state.current) renderMembers();
}

function alert(item) {
  state.alerts.set(item.id, item);
  renderAlerts();
  if (item.kind === "circle" && !item.acknowledged_at) refreshCircles();
  if (item.kind === "circle" && item.data.circle === state.current && item.data.change !== "created") {
    reloadMembers(state.current);   // someone joined or left the circle on screen
  }
}

function error(frame, purpose) {
  if (purpose?.clientId && frame.code !== "rate_limited" && frame.code !== "internal") {
    const sent = state.outgoing.get(purpose.clientId);   // refused for good: back into the composer, not retried
    state.outgoing.delete(purpose.clientId);
    document.querySelector(`#messages li.pending[data-client-id="${CSS.escape(purpose.clientId)}"]`)?.remove();
    if (sent && purpose.circle === state.current && !$("text").value) $("text").value = sent.text;
    if (sent?.attachments.length && frame.code !== "no_such_attachment") {   // not posted: still the author's to send
      state.attached.push(...sent.attachments.map((a) => ({ circle: sent.circle, ...a })));
      renderAttached();
    }
  }
  if (frame.code === "forbidden" && purpose && purpose.circle !== undefined) {
    state.denied.add(purpose.circle);
    if (purpose.circle === state.current) {
      showDenied("Accès refusé : vous n'êtes pas membre de ce cercle de soins.");
    }
    return;
  }
  notify(ERRORS[frame.code] || `Erreur du serveur (${frame.code}).`);
}

// The server's error codes (docs/instant-protocol.md) as a French-speaking user reads them.
const ERRORS = {
  rate_limited: "Trop d'envois rapprochés : patientez un instant.",
  too_long: "Message trop long : 4 000 caractères au plus.",
  no_such_message: "Le message cité n'existe pas dans ce cercle.",
  no_such_attachment: "Document joint introuvable ou déjà envoyé : joignez-le de nouveau.",
  bad_frame: "Message refusé : caractères non autorisés.",
  not_subscribed: "Ce cercle n'est pas suivi sur cette connexion.",
  too_many_subscriptions: "Trop de cercles suivis sur cette connexion.",
  internal: "Incident du serveur : réessayez.",
};

// --- circles and the conversation -------------------------------------------------------------

async function refreshCircles() {
  const response = await fetch("/api/circles", { headers: { Authorization: `Bearer ${state.session.access}` } });
  if (!response.ok) return;
  const { items } = await response.json();
  for (const summary of items) {
    if (!state.circles.has(summary.id)) {
      state.circles.set(summary.id, { summary, unread: summary.unread });
      request({ type: "subscribe", circle: summary.id }, { circle: summary.id });
    }
  }
  renderCircles();
}

function patientName(p) {
  return `${p.given_name.charAt(0)}${p.given_name.slice(1).toLowerCase()} ${p.family_name}`;
}

const activity = (circle) => circle.last?.at || circle.summary.created_at;

// The most recently active circle first, each with its last message and unread count; the
// page title counts the unread messages of the circles not muted.
function renderCircles() {
  const list = $("circle-list");
  const shown = [...state.circles].filter(([, c]) => c.summary).sort(([, a], [, b]) => activity(b).localeCompare(activity(a)));
  list.replaceChildren(...shown.map(([id, circle]) => {
    const p = circle.summary.patient;
    const muted = state.muted.has(id);
    const preview = circle.last
      ? `${circle.last.author.id === state.me?.id ? "Vous" : circle.last.author.name} : ${circle.last.text}`
      : `Né(e) le ${birthFmt.format(new Date(p.birth_date))}`;
    const head = el("span", { class: "circle-head" }, el("strong", { text: patientName(p) }));
    if (circle.last) head.append(el("time", { datetime: circle.last.at, text: shortTime(circle.last.at) }));
    const link = el("a", { href: `#/cercle/${id}` }, el("span", { class: "circle-text" }, head,
      el("small", { class: "preview", text: preview })));
    if (circle.unread > 0) {
      link.append(el("span", { class: muted ? "badge muted" : "badge", text: String(circle.unread),
                               title: `${circle.unread} non lu(s)${muted ? ", notifications coupées" : ""}` },
                     el("span", { class: "visually-hidden", text: " non lu(s)" })));
    }
    if (id === state.current) link.setAttribute("aria-current", "page");
    return el("li", { "data-circle": String(id), class: muted ? "muted" : "" }, link);
  }));
  $("no-circle").hidden = state.circles.size > 0;
  const unread = [...state.circles].reduce((sum, [id, c]) => sum + (state.muted.has(id) ? 0 : c.unread || 0), 0);
  document.title = unread ? `(${unread}) ${TITLE}` : TITLE;
  $("notify-enable").hidden = !("Notification" in window) || Notification.permission !== "default";
  // the indicators are for administrators and coordinators, as /api/indicators decides
  const coordinating = [...state.circles.values()].some((c) => c.summary?.coordinator === state.me?.id);
  $("indicators-link").hidden = !(state.admin || coordinating);
}

// --- search in a circle's history (the search frame: newest first, a page at a time) -------------

function toggleSearch(open = $("search-panel").hidden) {
  $("search-panel").hidden = !open;
  $("conversation").classList.toggle("searching", open);
  $("search-toggle").setAttribute("aria-expanded", String(open));
  $("search-toggle").textContent = open ? "Fermer la recherche" : "Rechercher";
  if (open) $("search-q").focus();
  else { $("search-results").replaceChildren(); $("search-status").textContent = ""; $("search-more").hidden = true; }
}

function runSearch(before) {
  const q = $("search-q").value.trim();
  if (q.length < 2 || state.current === null) return;
  state.searching = { circle: state.current, q };
  if (before === undefined) $("search-results").replaceChildren();
  $("search-status").textContent = "Recherche…";
  request({ type: "search", circle: state.current, q, ...(before ? { before } : {}) }, { circle: state.current, search: q });
}

function searchResults(frame, purpose) {
  if (!purpose || frame.circle !== state.current || purpose.search !== state.searching?.q) return;
  const list = $("search-results");
  list.append(...frame.messages.filter((m) => !isCancellation(m)).map((m) => {
    const item = messageItem(m);
    item.querySelector(".reply")?.remove();
    for (const node of item.querySelectorAll(".text, .event-title, .event-body > p:not(.event-document)")) {
      highlight(node, purpose.search);
    }
    return item;
  }));
  const count = list.children.length;
  $("search-status").textContent = count ? `${count}${frame.more ? " premiers" : ""} résultat${count > 1 ? "s" : ""}, du plus récent au plus ancien`
    : "Aucun message ne contient ces mots.";
  $("search-more").hidden = !frame.more;
  state.searching.oldest = frame.messages.at(-1)?.seq;
}

function highlight(node, q) {       // the words found, marked, as text nodes: never parsed as HTML
  const text = node.textContent;
  const lower = text.toLowerCase(), needle = q.toLowerCase();
  const parts = [];
  let at = 0;
  for (let i = lower.indexOf(needle); i !== -1; i = lower.indexOf(needle, i + needle.length)) {
    parts.push(text.slice(at, i), el("mark", { text: text.slice(i, i + needle.length) }));
    at = i + needle.length;
  }
  if (parts.length) node.replaceChildren(...parts, text.slice(at));
}

// --- notifications and mute ---------------------------------------------------------------------

const mutedKey = () => `msante.muted.${state.me.id}`;

function toggleMute() {
  const id = state.current;
  if (state.muted.has(id)) state.muted.delete(id); else state.muted.add(id);
  localStorage.setItem(mutedKey(), JSON.stringify([...state.muted]));
  renderMute();
  renderCircles();
}

function renderMute() {
  $("mute").textContent = state.muted.has(state.current) ? "Réactiver les notifications" : "Couper les notifications";
}

async function enableNotifications() {        // asked on a click: browsers refuse to ask otherwise
  await Notification.requestPermission();
  renderCircles();
}

// --- times ------------------------------------------------------------------------------------

const startOfDay = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();

function relativeTime(at) {
  const elapsed = Date.now() - new Date(at).getTime();
  if (elapsed < 60 * 1000) return "à l'instant";
  if (elapsed < RELATIVE_UNDER_MS) return relativeFmt.format(-Math.floor(elapsed / 60000), "minute");
  return timeFmt.format(new Date(at));
}

function shortTime(at) {     // the circle list: the time today, the day before
  const date = new Date(at);
  return startOfDay(date) === startOfDay(new Date()) ? relativeTime(at) : shortDayFmt.format(date);
}

function dayLabel(date) {
  const days = Math.round((startOfDay(new Date()) - startOfDay(date)) / 86400000);
  if (days === 0) return "Aujourd'hui";
  if (days === 1) return "Hier";
  const label = (date.getFullYear() === new Date().getFullYear() ? dayFmt : dayYearFmt).format(date);
  return label.charAt(0).toUpperCase() + label.slice(1);
}

// A separator before the first message of each day, wherever messages were added.
function placeDaySeparators() {
  const list = $("messages");
  list.querySelectorAll("li.day").forEach((li) => li.remove());
  let previous = null;
  for (const li of [...list.children]) {
    const day = startOfDay(new Date(li.dataset.at));
    if (day !== previous) li.before(el("li", { class: "day", text: dayLabel(new Date(li.dataset.at)) }));
    previous = day;
  }
}

function refreshTimes() {
  document.querySelectorAll("#messages time[data-relative]").forEach((t) => { t.textContent = relativeTime(t.dateTime); });
  renderCircles();
  if (state.current !== null) placeDaySeparators();   // midnight passed: "Aujourd'hui" becomes "Hier"
}

// "Lu par N sur M" under each of my messages: the other members whose read marker is at or past it.
function renderReceipts() {
  const circle = state.circles.get(state.current);
  if (!circle || !circle.members || !circle.receipts) return;
  const others = circle.members.filter((m) => m.id !== state.me.id);
  for (const li of document.querySelectorAll("#messages li.mine[data-seq]:not(.pending)")) {
    const seq = Number(li.dataset.seq);
    const readers = others.filter((m) => (circle.receipts.get(m.id) || 0) >= seq);
    const label = `Lu par ${readers.length} sur ${others.length}`;
    const current = li.querySelector(".receipt");
    if (current && current.dataset.label === `${label}:${readers.map((m) => m.id)}`) continue;
    const shown = readers.length
      ? el("details", { class: "receipt" }, el("summary", { text: label }), el("span", { text: readers.map((m) => m.name).join(", ") }))
      : el("p", { class: "receipt", text: label });
    shown.dataset.label = `${label}:${readers.map((m) => m.id)}`;
    if (current) current.replaceWith(shown); else li.append(shown);
  }
}

async function openCircle(id) {
  state.current = id;
  setView("conversation");
  $("conversation").hidden = false;
  $("messages").replaceChildren();
  $("typing").textContent = "";
  cancelReply();
  renderAttached();
  toggleSearch(false);
  $("older").hidden = true;
  $("members").replaceChildren();
  $("members-box").open = matchMedia("(min-width: 761px)").matches;   // a phone keeps the room for the thread
  const circle = state.circles.get(id);
  if (!circle) {   // not one of ours (an old link, a guess): the server decides, and says no
    $("patient-name").textContent = `Cercle ${id}`;
    $("patient-meta").textContent = "";
    request({ type: "subscribe", circle: id }, { circle: id });
    if (state.denied.has(id)) showDenied("Accès refusé : vous n'êtes pas membre de ce cercle de soins.");
    return;
  }
  showDenied(null);
  circle.firstSeq = undefined;
  const p = circle.summary.patient;
  $("patient-name").textContent = patientName(p);
  $("patient-meta").textContent = `Né(e) le ${birthFmt.format(new Date(p.birth_date))} · INS ${p.ins}`;
  renderCircles();
  renderMembers();
  renderMute();
  if (circle.head !== undefined) request({ type: "history", circle: id }, { circle: id });
  const response = await fetch(`/api/circles/${id}`, { headers: { Authorization: `Bearer ${state.session.access}` } });
  if (response.ok && state.current === id) {
    circle.members = (await response.json()).members;
    renderMembers();
    renderReceipts();
  }
}

function showDenied(text) {
  $("denied").hidden = !text;
  $("denied").textContent = text || "";
  $("composer").hidden = Boolean(text);
  $("thread").hidden = Boolean(text);
}

// The members, with presence; the coordinator may add (from the directory) and remove them.
function renderMembers() {
  const circle = state.circles.get(state.current);
  if (!circle || !circle.members) return;
  const online = circle.members.filter((m) => circle.present?.get(m.id) === "online").length;
  const coordinating = circle.summary?.coordinator === state.me.id;
  $("members-summary").textContent = `${circle.members.length} membres · ${online} en ligne`;
  $("member-add").hidden = !coordinating;
  $("leave-box").hidden = coordinating;   // a circle keeps its coordinator
  $("leave-confirm").hidden = true;
  $("members").replaceChildren(...circle.members.map((m) => {
    const item = el("li", { "data-member": m.id, "data-state": circle.present?.get(m.id) || "offline" },
      m.role === "coordinator" ? `${m.name} (coordination)` : m.name);
    if (coordinating && m.id !== state.me.id) {
      const remove = el("button", { type: "button", class: "secondary small", text: "Retirer",
                                    "aria-label": `Retirer ${m.name} du cercle` });
      remove.addEventListener("click", () => changeMembers("DELETE", `/api/circles/${state.current}/members/${m.id}`));
      item.append(" ", remove);
    }
    return item;
  }));
}

async function changeMembers(method, path, body) {
  const id = state.current;
  const response = await api(path, { method, ...(body ? { body: JSON.stringify(body) } : {}) });
  if (!response.ok) { notify("Modification des membres refusée."); return; }
  await reloadMembers(id);
}

async function reloadMembers(id) {
  const detail = await api(`/api/circles/${id}`);
  if (detail.ok && state.current === id && state.circles.has(id)) {
    state.circles.get(id).members = (await detail.json()).members;
    renderMembers();
    renderReceipts();
  }
}

// A hospital event of the circle's patient: a card across the thread, not a bubble, with an icon
// and a tint for its kind; the server's `text` says it all for clients that know no better.
const EVENT_LABELS = { ADM: "Admission", URG: "Passage aux urgences", SOR: "Sortie d'hospitalisation",
                       DOC: "Nouveau document" };
const EVENT_ICONS = {   // 24x24 paths: a cross (admission), a siren (ED), a door (discharge), a page (document)
  ADM: "M10 4h4v6h6v4h-6v6h-4v-6H4v-4h6z",
  URG: "M6 18v-6a6 6 0 0 1 12 0v6h2v2H4v-2zm5-13V2h2v3zM3.5 7.9l1.4-1.4 2 2-1.4 1.4zm15.6-1.4 1.4 1.4-2 2-1.4-1.4z",
  SOR: "M5 3h10v2H7v14h8v2H5zm11 4 5 5-5 5v-3.5h-6v-3h6z",
  DOC: "M6 2h8l5 5v15H6zm7 1.5V8h4.5zM8 12v1.5h8V12zm0 3v1.5h8V15zm0 3v1.5h5V18z",
};

function eventIcon(kind) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "event-icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", EVENT_ICONS[kind] || EVENT_ICONS.ADM);
  svg.append(path);
  return svg;
}

function hospitalTime(iso) {   // the hospital's own time, as its message gave it: "06/12/2026 à 08:12"
  const found = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(iso || "");
  return found ? `${found[3]}/${found[2]}/${found[1]} à ${found[4]}:${found[5]}` : "";
}

function eventItem(m) {
  const e = m.event;
  const label = EVENT_LABELS[e.kind] || "Événement hospitalier";
  const when = el("time", { datetime: m.at, title: dateTimeFmt.format(new Date(m.at)), "data-relative": "",
                            text: relativeTime(m.at) });
  const reply = el("button", { type: "button", class: "reply", text: "Répondre",
                               "aria-label": `Répondre à l'événement ${label}` });
  reply.addEventListener("click", () => startReply(m));
  const body = el("div", { class: "event-body" },
    el("div", { class: "who" }, el("span", { text: "Événement hospitalier · " }, when), reply),
    el("strong", { class: "event-title", text: label }),
    el("p", { text: [e.hospital, e.unit].filter(Boolean).join(" — ") }),
    el("p", { class: "event-when", text: hospitalTime(e.occurred) }));
  if (e.document) {
    const d = e.document;
    const kind = KINDS[d.media_type] || (d.media_type === "text/xml" ? "CDA" : "");
    body.append(el("p", { class: "event-document" },
      el("span", { class: "kind", text: kind || "DOC" }), " ",
      `${d.type_label || "Document"} (LOINC ${d.type_code}) · ${Math.max(1, Math.round(d.size / 1024))} Ko · envoyé au médecin traitant`));
  }
  body.append(el("p", { class: "event-receipts", "data-state": "unknown" }));
  const item = el("li", { class: "event", "data-kind": e.kind, "data-event": String(e.id), "data-seq": String(m.seq),
                          "data-client-id": m.client_id, "data-at": m.at, "aria-label": `${label} : ${m.text}` },
                  eventIcon(e.kind), body);
  if (e.cancelled) markCancelled(item, e.cancelled);
  return item;
}

// A cancellation (ADT^A11, A13, ZBE-4 CANCEL) is an item of its own (`event.kind` ANN) naming the
// seq of the cancelled event's item: no card, the card it names is struck through and says when.
// History already holds the cancelled item marked (`event.cancelled`), so an older page needs none.
const isCancellation = (m) => m.kind === "event" && m.event?.kind === "ANN";

function applyCancellations(items) {
  for (const m of items.filter(isCancellation)) {
    const card = $("messages").querySelector(`li.event[data-seq="${m.event.cancels.seq}"]`);
    if (card) markCancelled(card, { at: m.at, by: m.event.id });
  }
}

function markCancelled(card, cancelled) {
  if (card.classList.contains("cancelled")) return;
  card.classList.add("cancelled");
  card.dataset.cancelledBy = String(cancelled.by);
  card.querySelector(".event-title").after(el("p", { class: "event-cancelled" },
    el("strong", { text: "Annulé" }), ` par l'établissement le ${dateTimeFmt.format(new Date(cancelled.at))}`));
  card.setAttribute("aria-label", `Annulé : ${card.getAttribute("aria-label")}`);
  card.querySelector(".event-receipts").after(el("p", { class: "event-receipts cancel-receipts", "data-state": "unknown" }));
}

// A document that came by mail in an IHE_XDM.ZIP (hospital/incoming.py): its type by its LOINC
// label, who wrote it and when, and the way to the mail: a link when it reached a box this person
// reads, else the box it is in (the mail itself, and the document, stay in that box).
function documentItem(m) {
  const e = m.event;
  const label = "Document reçu par messagerie";
  const when = el("time", { datetime: m.at, title: dateTimeFmt.format(new Date(m.at)), "data-relative": "",
                            text: relativeTime(m.at) });
  const reply = el("button", { type: "button", class: "reply", text: "Répondre",
                               "aria-label": `Répondre au document reçu de ${e.hospital}` });
  reply.addEventListener("click", () => startReply(m));
  const created = e.documents[0]?.created;
  const body = el("div", { class: "event-body" },
    el("div", { class: "who" }, el("span", { text: "Messagerie sécurisée · " }, when), reply),
    el("strong", { class: "event-title", text: label }),
    ...e.documents.map((d) => el("p", { class: "event-document" }, el("span", { class: "kind", text: "DOC" }), " ",
      d.type_label || "Document", d.type_code ? ` (LOINC ${d.type_code})` : "")),
    el("p", { text: `${e.hospital}${e.mail.from && e.mail.from !== e.hospital ? ` · envoyé par ${e.mail.from}` : ""}` }),
    el("p", { class: "event-when", text: created ? `Créé le ${dateTimeFmt.format(new Date(created))}` : "" }));
  const where = el("p", { class: "event-mail" });
  body.append(where);
  linkToMail(where, e.mail.boxes.filter((b) => b.folder === "INBOX"));
  return el("li", { class: "event", "data-kind": "DOC", "data-source": "mail", "data-seq": String(m.seq),
                    "data-client-id": m.client_id, "data-at": m.at, "aria-label": `${label} : ${m.text}` },
            eventIcon("DOC"), body);
}

async function linkToMail(where, boxes) {
  where.textContent = boxes.length ? `Message dans la boîte ${boxes.map((b) => b.mailbox).join(", ")}` : "";
  state.boxes ??= api("/api/mailboxes").then((r) => (r.ok ? r.json() : { items: [] }))
    .then(({ items }) => new Set(items.map((b) => b.address)), () => { state.boxes = null; return new Set(); });
  const mine = await state.boxes;
  const box = boxes.find((b) => mine.has(b.mailbox));
  if (box) {
    where.replaceChildren(el("a", { class: "open-mail", href: `#/courriel/${encodeURIComponent(box.mailbox)}/${box.uid}`,
                                    text: "Ouvrir le message" }), ` (boîte ${box.mailbox})`);
  }
}

// --- who was told of a hospital event: ticks on its card, from /api/notifications (the notices and
// their receipts), asked for when a card appears whose event it has not said, and again when a
// `notice` frame says one changed; a circle without hospital events never asks -------------------

const NOTICE_DELAY_MS = 250;   // the receipts of one event come together: one request for them
const NOTICE_STEPS = { queued: 1, sent: 2, delivered: 3, read: 4 };
const NOTICE_SHOWN = {   // state -> [ticks, words]
  queued: ["…", "en attente d'envoi"], sent: ["✓", "envoyé"], delivered: ["✓✓", "remis"], read: ["✓✓", "lu"],
  failed: ["✗", "échec de l'envoi"], none: ["—", "non prévenu"], pending: ["…", "envoi en cours"],
};
const NOT_NOTIFIED = [["no GP given", "aucun médecin traitant indiqué"],
  ["GP has no MSSanté box", "pas de boîte MSSanté"], ["GP unknown to the directory", "RPPS inconnu de l'annuaire"],
  ["GP identifier unusable", "RPPS invalide"]];

function noticeChanged(frame) {
  const circle = state.circles.get(frame.circle);
  if (!circle) return;
  if (frame.circle === state.current) refreshNotices(frame.circle); else forgetNotices(circle);   // asked when shown
}

function forgetNotices(circle) {
  circle.notices = null;
  circle.asked = null;   // the events asked about: a card of one of them asks no more
}

function refreshNotices(id) {
  const circle = state.circles.get(id);
  if (!circle?.summary) return;
  clearTimeout(circle.noticeTimer);
  circle.noticeTimer = setTimeout(async () => {
    const response = await api(`/api/notifications?patient=${encodeURIComponent(circle.summary.patient.ins)}`);
    if (!response.ok) return;
    circle.notices = new Map((await response.json()).events.map((e) => [String(e.event), e]));
    circle.asked = new Set([...(circle.asked || []), ...circle.notices.keys()]);   // one not listed (past 500) stays asked
    if (state.current === id) renderNotices();
  }, NOTICE_DELAY_MS);
}

function noticeState(n) {   // the furthest receipt; a failure unless delivered anyway
  if (n.status === "not_notified") return { state: "none" };
  let best = null, failed = null;
  for (const h of n.history) {
    if (h.status === "failed") failed = h;
    else if (NOTICE_STEPS[h.status] && (!best || NOTICE_STEPS[h.status] >= NOTICE_STEPS[best.status])) best = h;
  }
  if (failed && (!best || NOTICE_STEPS[best.status] < NOTICE_STEPS.delivered)) return { state: "failed", at: failed.at };
  return best ? { state: best.status, at: best.at } : { state: "queued" };
}

function renderNotices() {
  const circle = state.circles.get(state.current);
  if (!circle) return;
  const cards = [...document.querySelectorAll("#messages li.event[data-event]")];
  const unknown = cards.flatMap((li) => (li.dataset.cancelledBy ? [li.dataset.event, li.dataset.cancelledBy] : [li.dataset.event]))
    .filter((e) => !circle.notices?.has(e) && !circle.asked?.has(e));
  if (unknown.length) {
    circle.asked = new Set([...(circle.asked || []), ...unknown]);
    refreshNotices(state.current);
  }
  if (!circle.notices) return;
  for (const li of cards) {
    showTold(li.querySelector(".event-receipts"), circle.notices.get(li.dataset.event), "");
    if (li.dataset.cancelledBy) showTold(li.querySelector(".cancel-receipts"), circle.notices.get(li.dataset.cancelledBy),
                                         "Annulation : ");
  }
}

function showTold(line, event, prefix) {
  if (!event || !line) return;
  const gp = event.notices.find((n) => n.role === "gp" || n.role === "gp_structure");
  // not dispatched yet: its `notice` frame (dispatched) will ask again
  const shown = gp ? noticeState(gp) : { state: event.pending ? "pending" : "none" };
  const [ticks, words] = NOTICE_SHOWN[shown.state];
  const who = gp?.role === "gp_structure" ? "Structure du médecin traitant" : "Médecin traitant";
  const why = gp && shown.state === "none" ? NOT_NOTIFIED.find(([start]) => gp.reason.startsWith(start)) : null;
  const parts = [`${prefix}${who} : ${words}${shown.at ? ` à ${timeFmt.format(new Date(shown.at))}` : ""}${why ? ` (${why[1]})` : ""}`];
  const others = event.notices.filter((n) => n !== gp && n.status !== "not_notified");
  if (others.length) {
    const read = others.filter((n) => noticeState(n).state === "read").length;
    parts.push(`abonnés : ${others.length} prévenu${others.length > 1 ? "s" : ""}, ${read} lu${read > 1 ? "s" : ""}`);
  }
  const text = parts.join(" · ");
  if (line.dataset.state === shown.state && line.textContent.endsWith(text)) return;
  line.dataset.state = shown.state;
  line.title = gp?.recipient || "";
  line.replaceChildren(el("span", { class: "ticks", "aria-hidden": "true", text: ticks }), ` ${text}`);
}

function messageItem(m) {
  if (m.kind === "event" && m.event) return eventItem(m);
  if (m.kind === "document" && m.event?.mail) return documentItem(m);
  const mine = m.author.id === state.me.id;
  const when = el("time", { datetime: m.at, title: dateTimeFmt.format(new Date(m.at)), "data-relative": "",
                            text: relativeTime(m.at) });
  const who = el("div", { class: "who" }, el("span", { text: `${mine ? "Vous" : m.author.name} · ` }, when));
  if (m.seq) {
    const reply = el("button", { type: "button", class: "reply", text: "Répondre",
                                 "aria-label": `Répondre au message de ${mine ? "vous-même" : m.author.name}` });
    reply.addEventListener("click", () => startReply(m));
    who.append(reply);
  }
  const item = el("li", { class: mine ? "mine" : "", "data-seq": String(m.seq), "data-client-id": m.client_id,
                          "data-at": m.at }, who);
  if (m.reply_to) {
    item.append(el("blockquote", { class: "quote", "data-quotes": String(m.reply_to.seq) },
      el("strong", { text: `${m.reply_to.author.id === state.me.id ? "Vous" : m.reply_to.author.name} : ` }),
      m.reply_to.text));
  }
  item.append(el("div", { class: "text", text: m.text }));
  if (m.attachments?.length) item.append(attachmentList(m.circle ?? state.current, m.attachments));
  return item;
}

// --- attachments: uploaded first (HTTPS), then carried by a post -------------------------------

const KINDS = { "application/pdf": "PDF", "image/png": "PNG", "image/jpeg": "JPEG" };

async function attachmentBlob(circle, attachment) {   // fetched with the token: a link or an <img> could not send it
  const response = await api(`/api/circles/${circle}/attachments/${attachment.id}`);
  if (!response.ok) throw new Error(String(response.status));
  return URL.createObjectURL(await response.blob());
}

function attachmentList(circle, attachments) {
  const list = el("ul", { class: "files", "aria-label": "Documents joints" });
  for (const a of attachments) {
    const link = el("a", { href: `/api/circles/${circle}/attachments/${a.id}`, download: a.name,
                           class: "attachment", "data-attachment": String(a.id),
                           title: `Télécharger ${a.name}` },
                    el("span", { class: "kind", text: KINDS[a.type] || "FICHIER" }), ` ${a.name} `,
                    el("small", { text: `(${sizeFmt(a.size)})` }));
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      try {
        const url = await attachmentBlob(circle, a);
        const save = el("a", { href: url, download: a.name });
        save.click();
        setTimeout(() => URL.revokeObjectURL(url), 60 * 1000);
      } catch { notify(`Téléchargement de « ${a.name} » impossible.`); }
    });
    const item = el("li", {}, link);
    if (a.type.startsWith("image/")) {
      const thumbnail = el("img", { alt: `Aperçu de ${a.name}`, loading: "lazy" });
      attachmentBlob(circle, a).then((url) => { thumbnail.src = url; }, () => thumbnail.remove());
      item.append(thumbnail);
    }
    list.append(item);
  }
  return list;
}

async function attachFiles(files) {
  const id = state.current;
  for (const file of files) {
    if (file.size > state.maxAttachment) {
      notify(`« ${file.name} » dépasse la taille maximale d'un document (${sizeFmt(state.maxAttachment)}).`);
      continue;
    }
    const response = await fetch(`/api/circles/${id}/attachments?name=${encodeURIComponent(file.name)}`, {
      method: "POST", body: file, headers: { Authorization: `Bearer ${state.session.access}` } });
    if (response.status === 201) {
      state.attached.push({ circle: id, ...(await response.json()) });
    } else {
      notify(response.status === 415 ? `« ${file.name} » refusé : seuls les documents PDF, PNG ou JPEG sont acceptés.`
        : response.status === 413 ? `« ${file.name} » dépasse la taille maximale d'un document (${sizeFmt(state.maxAttachment)}).`
          : `Envoi de « ${file.name} » impossible.`);
    }
  }
  renderAttached();
}

function renderAttached() {
  const pending = state.attached.filter((a) => a.circle === state.current);
  $("attached").replaceChildren(...pending.map((a) => {
    const remove = el("button", { type: "button", class: "secondary", text: "×", "aria-label": `Retirer ${a.name}` });
    remove.addEventListener("click", () => { state.attached = state.attached.filter((x) => x !== a); renderAttached(); });
    return el("li", { "data-attachment": String(a.id) }, el("span", { text: `${KINDS[a.type] || ""} ${a.name} (${sizeFmt(a.size)})` }), remove);
  }));
  $("attached").hidden = pending.length === 0;
  $("text").required = pending.length === 0;   // a document alone may be sent
}

function startReply(m) {
  state.replyTo = { seq: m.seq, author: m.author, text: m.text.slice(0, 200) };
  $("replying-to").textContent = `Réponse à ${m.author.id === state.me.id ? "vous-même" : m.author.name} :`;
  $("replying-text").textContent = state.replyTo.text;
  $("replying").hidden = false;
  $("text").focus();
}

function cancelReply() {
  state.replyTo = null;
  $("replying").hidden = true;
}

function appendMessages(items) {
  const list = $("messages");
  for (const m of items) {
    if (isCancellation(m) || list.querySelector(`li[data-seq="${m.seq}"]`)) continue;
    const pending = list.querySelector(`li.pending[data-client-id="${CSS.escape(m.client_id)}"]`);
    if (pending && m.author.id === state.me.id) pending.replaceWith(messageItem(m));
    else list.append(messageItem(m));
  }
  applyCancellations(items);
  placeDaySeparators();
  renderReceipts();
  renderNotices();
  $("thread").scrollTop = $("thread").scrollHeight;
}

function prependMessages(items) {
  const list = $("messages");
  list.prepend(...items.filter((m) => !isCancellation(m) && !list.querySelector(`li[data-seq="${m.seq}"]`))
    .map(messageItem));
  applyCancellations(items);
  placeDaySeparators();
  renderReceipts();
  renderNotices();
}

function markRead(id) {      // at most one read marker every READ_EVERY_MS: a busy circle stays under the rate limit
  const circle = state.circles.get(id);
  if (!circle || circle.readTimer) return;
  circle.readTimer = setTimeout(() => {
    circle.readTimer = null;
    if (document.visibilityState !== "visible" || !circle.lastSeq || state.current !== id) return;
    if (circle.unread > 0 || circle.readSent !== circle.lastSeq) {
      circle.readSent = circle.lastSeq;
      request({ type: "read", circle: id, seq: circle.lastSeq }, { circle: id });
    }
  }, READ_EVERY_MS);
}

function post(event) {
  event.preventDefault();
  const id = state.current;
  const attachments = state.attached.filter((a) => a.circle === id).map(({ id: aid, name, type, size }) =>
    ({ id: aid, name, type, size }));
  const text = $("text").value.trim() || attachments.map((a) => a.name).join(", ");
  if (!text || id === null || !state.circles.has(id)) return;
  const clientId = crypto.randomUUID();
  const replyTo = state.replyTo;
  state.outgoing.set(clientId, { circle: id, text, reply_to: replyTo, attachments });
  const pending = messageItem({ circle: id, seq: "", client_id: clientId, text, at: new Date().toISOString(),
                                author: state.me, reply_to: replyTo, attachments });
  pending.classList.add("pending");
  $("messages").append(pending);
  placeDaySeparators();
  $("thread").scrollTop = $("thread").scrollHeight;
  request({ type: "post", circle: id, client_id: clientId, text, ...(replyTo ? { reply_to: replyTo.seq } : {}),
            ...(attachments.length ? { attachments: attachments.map((a) => a.id) } : {}) },
          { circle: id, clientId });
  $("text").value = "";
  state.attached = state.attached.filter((a) => a.circle !== id);
  renderAttached();
  cancelReply();
}

function announceTyping() {
  const now = Date.now();
  if (state.current === null || now - state.typingSentAt < TYPING_EVERY_MS) return;
  state.typingSentAt = now;
  send({ type: "typing", circle: state.current });
}

// --- alerts -----------------------------------------------------------------------------------

function renderAlerts() {
  const items = [...state.alerts.values()].sort((a, b) => b.id - a.id);
  const pending = items.filter((a) => !a.acknowledged_at);
  $("alert-count").textContent = String(pending.length);
  $("alert-count").hidden = pending.length === 0;
  $("no-alert").hidden = pending.length > 0;
  $("alert-list").replaceChildren(...items.map((a) => {
    const details = [];
    if (a.kind === "mail") details.push(`De : ${a.data.from}`, `Objet : ${a.data.subject || "(sans objet)"}`);
    const item = el("li", { "data-alert": String(a.id), class: a.acknowledged_at ? "done" : "" },
      el("strong", { text: a.title }),
      ...details.map((d) => el("p", { text: d })),
      el("p", { text: dateTimeFmt.format(new Date(a.created_at)) }));
    if (a.kind === "mail") {
      const open = el("button", { type: "button", class: "secondary small open-mail", text: "Ouvrir le message" });
      open.addEventListener("click", () => {
        if (!$("alerts").hidden && matchMedia("(max-width: 760px)").matches) toggleAlerts();   // a phone shows one panel
        location.hash = `#/courriel/${encodeURIComponent(a.data.mailbox)}/${a.data.uid}`;
      });
      item.append(open, " ");
    }
    const circle = a.kind === "patient" && [...state.circles.values()].find((c) => c.summary?.patient.ins === a.data.ins);
    if (circle) {   // the event is in the circle's timeline
      const open = el("button", { type: "button", class: "secondary small open-circle", text: "Voir dans le cercle" });
      open.addEventListener("click", () => {
        if (!$("alerts").hidden && matchMedia("(max-width: 760px)").matches) toggleAlerts();
        location.hash = `#/cercle/${circle.summary.id}`;
      });
      item.append(open, " ");
    }
    if (a.acknowledged_at) {
      item.append(el("p", { text: `Acquittée par ${a.acknowledged_by.name} le ${dateTimeFmt.format(new Date(a.acknowledged_at))}` }));
    } else {
      const button = el("button", { type: "button", text: "Acquitter" });
      button.addEventListener("click", () => request({ type: "alert.ack", alert: a.id }, { alert: a.id }));
      item.append(button);
    }
    return item;
  }));
}

function toggleAlerts() {
  const panel = $("alerts");
  const thread = $("thread");
  if (panel.hidden) state.threadScroll = thread.scrollTop;   // a phone hides the thread, which forgets it
  panel.hidden = !panel.hidden;
  if (panel.hidden) thread.scrollTop = state.threadScroll;
  $("app").classList.toggle("with-alerts", !panel.hidden);
  $("alerts-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  setView(document.body.dataset.view);
  (panel.hidden ? $("alerts-toggle") : $("alerts-close")).focus();
}

// --- page -------------------------------------------------------------------------------------

// The view a phone shows (the list or a conversation; the alerts panel over either): the bar's
// back arrow leads out of anything but the list, so every panel has a way back.
function setView(view) {
  document.body.dataset.view = view;
  $("back").hidden = view === "list" && $("alerts").hidden;
}

function back() {
  if (!$("alerts").hidden) toggleAlerts(); else location.hash = document.body.dataset.view === "mail" ? state.mailFrom : "";
}

function setStatus(online) {
  const status = $("status");
  status.dataset.state = online ? "online" : "offline";
  status.querySelector(".label").textContent = online ? "En ligne" : "Hors ligne";
}

function notify(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = false;
  setTimeout(() => { notice.hidden = true; }, 6000);
}

function showSignIn(message) {
  $("signin").hidden = false;
  $("circles").hidden = true;
  $("conversation").hidden = true;
  if (message) notify(message);
}

function route() {
  const from = state.routed;
  state.routed = location.hash;
  const match = location.hash.match(/^#\/cercle\/(\d+)$/);
  $("mail-clients").hidden = true;
  $("new-circle").hidden = true;
  $("mail-view").hidden = true;
  $("indicators").hidden = true;
  const mail = location.hash.match(/^#\/courriel\/([^/]+)\/(\d+)$/);
  if (mail) {
    state.mailFrom = /^#\/cercle\//.test(from) ? from : "";   // a mail opened from a timeline goes back to it
    state.current = null;
    $("conversation").hidden = true;
    openMail(decodeURIComponent(mail[1]), Number(mail[2]));
    renderCircles();
    return;
  }
  if (match) { openCircle(Number(match[1])); return; }
  state.current = null;
  $("conversation").hidden = true;
  if (location.hash === "#/logiciels") { openMailClients(); renderCircles(); return; }
  if (location.hash === "#/nouveau-cercle") { openNewCircle(); renderCircles(); return; }
  if (location.hash === "#/indicateurs") { openIndicators(); renderCircles(); return; }
  setView("list");
  renderCircles();
}

// --- a mail an alert announced: read only, text and attachments (never HTML), mailserver/webmail.py --

const sizeFmt = (n) => (n < 1024 ? `${n} o` : n < 1048576 ? `${Math.round(n / 1024)} ko` : `${(n / 1048576).toFixed(1)} Mo`);

async function openMail(address, uid) {
  setView("mail");
  const view = $("mail-view");
  view.hidden = false;
  const path = `/api/mailboxes/${encodeURIComponent(address)}/messages/${uid}`;
  view.dataset.path = path;
  for (const id of ["mail-headers", "mail-text", "mail-attachments"]) $(id).replaceChildren();
  $("mail-subject").textContent = "Message";
  $("mail-error").hidden = true;
  const response = await api(path);
  if (!response.ok) {
    $("mail-error").textContent = response.status === 403 ? "Accès refusé : cette boîte ne vous est pas accessible."
      : "Ce message n'est plus dans la boîte de réception.";
    $("mail-error").hidden = false;
    $("mail-seen").hidden = true;
    return;
  }
  const mail = await response.json();
  $("mail-subject").textContent = mail.subject || "(sans objet)";
  const rows = [["De", mail.from], ["À", mail.to], ["Cc", mail.cc], ["Date", mail.date], ["Boîte", mail.address]];
  $("mail-headers").replaceChildren(...rows.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  $("mail-text").textContent = mail.text ?? (mail.html_only
    ? "Ce message n'a pas de version texte : ouvrez-le dans un logiciel de messagerie." : "(message sans texte)");
  if (mail.truncated) $("mail-text").append(el("p", { text: "… (suite dans un logiciel de messagerie)" }));
  showSeen(mail.seen);
  $("mail-attachments-title").hidden = mail.attachments.length === 0;
  $("mail-attachments").replaceChildren(...mail.attachments.map((a) => {
    const name = a.filename || `partie-${a.part}`;
    const download = el("button", { type: "button", class: "secondary small", text: `Télécharger ${name} (${sizeFmt(a.size)})` });
    download.addEventListener("click", () => downloadPart(`${path}/parts/${a.part}`, name));
    const item = el("li", { "data-part": a.part }, download);
    if (a.documents) {
      item.append(el("ul", { "aria-label": "Documents de l'archive XDM" },
        ...a.documents.map((d) => el("li", { text: `${d.name} (${sizeFmt(d.size)})` }))));
    }
    return item;
  }));
}

function showSeen(seen) {
  $("mail-seen").hidden = seen;
  $("mail-seen-state").hidden = !seen;
}

async function downloadPart(path, name) {     // the API wants the bearer token: fetched, then saved
  const response = await api(path);
  if (!response.ok) { notify("Téléchargement refusé."); return; }
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function markMailSeen() {
  const response = await api(`${$("mail-view").dataset.path}/seen`, { method: "POST" });
  if (response.ok) showSeen(true); else notify("Impossible de marquer ce message comme lu.");
}

// --- a new circle: the patient's INS identity, members found in the directory as one types ------

const SEARCH_DELAY_MS = 300;          // one directory search per pause in typing, not per key
const chosen = new Map();             // idnat -> name: the members to add

function openNewCircle() {
  setView("create");
  $("new-circle").hidden = false;
  $("new-circle-error").hidden = true;
  $("nc-ins").focus();
}

const professionalName = (p) => [["DR", "DOCTEUR"].includes((p.practice_civility || "").toUpperCase()) ? "Dr" : "",
  p.given_name.charAt(0) + p.given_name.slice(1).toLowerCase(), p.family_name.toUpperCase()].filter(Boolean).join(" ");

// Professionals found in the directory as `input` is typed into, listed in `results`; `skip`
// leaves out those already chosen, `pick` takes one.
function directorySearch(input, results, skip, pick) {
  let timer = null;
  const search = async () => {
    const text = input.value.trim();
    if (text.length < 2) { results.replaceChildren(); return; }
    const field = /^[0-9]+$/.test(text) ? "identifier" : "q";
    const response = await api(`/api/directory/search?${new URLSearchParams({ [field]: text, kind: "professional", per_page: "8" })}`);
    if (!response.ok || input.value.trim() !== text) return;
    const { items } = await response.json();
    results.replaceChildren(...items.filter((p) => p.idnat !== state.me.id && !skip(p.idnat)).map((p) => {
      const button = el("button", { type: "button", "data-idnat": p.idnat }, el("strong", { text: professionalName(p) }),
        ` · ${p.profession_label || ""}${p.rpps ? ` · RPPS ${p.rpps}` : ""}`);
      button.addEventListener("click", () => {
        input.value = "";
        results.replaceChildren();
        input.focus();
        pick(p);
      });
      return el("li", {}, button);
    }));
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, SEARCH_DELAY_MS); });
}

function renderChosen() {
  $("nc-members").replaceChildren(...[...chosen].map(([idnat, name]) => {
    const remove = el("button", { type: "button", class: "secondary small", text: "Retirer", "aria-label": `Retirer ${name}` });
    remove.addEventListener("click", () => { chosen.delete(idnat); renderChosen(); });
    return el("li", { "data-idnat": idnat }, el("span", { text: name }), remove);
  }));
}

const PATIENT_ERRORS = {
  ins: "Matricule INS invalide : 15 caractères, clé de contrôle comprise.",
  ins_oid: "Référentiel INS inconnu.",
  family_name: "Nom : lettres, espaces, traits d'union et apostrophes seulement.",
  given_name: "Prénom : lettres, espaces, traits d'union et apostrophes seulement.",
  birth_date: "Date de naissance invalide (passée, après 1890).",
};

async function createCircle(event) {
  event.preventDefault();
  const form = $("new-circle-form");
  const patient = Object.fromEntries(["ins", "ins_oid", "family_name", "given_name", "birth_date"]
    .map((name) => [name, form.elements[name].value.trim()]));
  const response = await api("/api/circles", { method: "POST", body: JSON.stringify({
    patient, members: [...chosen.keys()].map((id) => ({ id })) }) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const field = (body.message || "").split(":")[0];
    $("new-circle-error").textContent = response.status === 409 ? "Un cercle de soins existe déjà pour ce patient."
      : PATIENT_ERRORS[field] || "Création refusée : vérifiez les champs.";
    $("new-circle-error").hidden = false;
    return;
  }
  form.reset();
  chosen.clear();
  renderChosen();
  await refreshCircles();
  location.hash = `#/cercle/${body.id}`;
}

// --- "Connecter un logiciel de messagerie" ------------------------------------------------------
// The servers come from the autoconfig document Thunderbird reads (web/autoconfig.py): one source.

const api = (path, options = {}) => fetch(path, {
  ...options, headers: { Authorization: `Bearer ${state.session.access}`, ...(options.body ? { "Content-Type": "application/json" } : {}) },
});
const boxPath = (address) => `/api/mailboxes/${encodeURIComponent(address)}/app-passwords`;

async function openMailClients() {
  setView("clients");
  $("mail-clients").hidden = false;
  $("password-error").hidden = true;
  const response = await fetch("/.well-known/autoconfig/mail/config-v1.1.xml");
  const xml = new DOMParser().parseFromString(await response.text(), "application/xml");
  const uses = { imap: "Réception (IMAP)", smtp: "Envoi (SMTP)" };
  const security = { SSL: "SSL/TLS", STARTTLS: "STARTTLS" };
  $("server-rows").replaceChildren(...[...xml.querySelectorAll("incomingServer, outgoingServer")].map((s) => el("tr", {},
    el("td", { text: uses[s.getAttribute("type")] }), el("td", { text: s.querySelector("hostname").textContent }),
    el("td", { text: s.querySelector("port").textContent }),
    el("td", { text: security[s.querySelector("socketType").textContent] || s.querySelector("socketType").textContent }))));
  $("ca-box").hidden = !(await fetch("/mail/ca.crt", { method: "HEAD" })).ok;
  const boxes = await api("/api/mailboxes");
  if (!boxes.ok) return;
  const { items } = await boxes.json();
  $("example-box").textContent = items[0]?.address || "prenom.nom@…";
  $("boxes").replaceChildren(...items.map((box) => el("div", { class: "box", "data-box": box.address },
    el("h4", { text: `${box.address} (${box.role === "owner" ? "votre boîte" : "boîte déléguée"})` }),
    el("ul", { class: "passwords" }), el("p", { class: "created", hidden: "" }))));
  for (const box of items) { renderPasswords(box.address); }
}

async function renderPasswords(address) {
  const panel = document.querySelector(`#boxes [data-box="${CSS.escape(address)}"]`);
  const response = await api(boxPath(address));
  if (!panel || !response.ok) return;
  const { items } = await response.json();
  const list = panel.querySelector("ul");
  list.replaceChildren(...items.map((p) => {
    const revoke = el("button", { type: "button", class: "secondary small", text: "Révoquer",
                                  "aria-label": `Révoquer le mot de passe ${p.label}` });
    revoke.addEventListener("click", async () => {
      const done = await api(`${boxPath(address)}/${encodeURIComponent(p.label)}`, { method: "DELETE" });
      if (!done.ok) showPasswordError(done);
      renderPasswords(address);
    });
    const used = p.last_used_at ? `utilisé le ${dateTimeFmt.format(new Date(p.last_used_at))}` : "jamais utilisé";
    return el("li", { "data-label": p.label }, el("span", {}, el("strong", { text: p.label }), ` · ${used}`), revoke);
  }));
  if (!items.length) list.append(el("li", { class: "empty", text: "Aucun mot de passe d'application." }));
  if (!panel.querySelector("form")) panel.append(passwordForm(address));
}

function passwordForm(address) {
  const id = `label-${address.replace(/[^a-z0-9]/gi, "-")}`;
  const input = el("input", { id, name: "label", maxlength: "80", required: "", placeholder: "Thunderbird du cabinet" });
  const form = el("form", {}, el("label", { for: id, text: "Appareil ou logiciel :" }), input,
    el("button", { type: "submit", text: "Créer un mot de passe" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await api(boxPath(address), { method: "POST", body: JSON.stringify({ label: input.value }) });
    if (!response.ok) { showPasswordError(response); return; }
    const created = await response.json();
    $("password-error").hidden = true;
    const shown = form.parentElement.querySelector(".created");
    shown.replaceChildren(`Mot de passe pour « ${created.label} » : `, el("code", { text: created.password }),
      el("br"), "Copiez-le maintenant dans le logiciel : il ne sera plus affiché.");
    shown.hidden = false;
    input.value = "";
    renderPasswords(address);
  });
  return form;
}

async function showPasswordError(response) {
  const reasons = { 400: "Refusé : ce nom est déjà pris ou trop long, ou cette boîte a déjà 20 mots de passe.",
                    403: "Cette boîte ne vous est pas accessible.", 404: "Ce mot de passe n'existe plus." };
  $("password-error").textContent = reasons[response.status] || `Refusé (${response.status}).`;
  $("password-error").hidden = false;
}

async function start() {
  $("signin-button").addEventListener("click", () => signIn().catch(() => notify("Connexion impossible.")));
  $("signout").addEventListener("click", () => signOut("Vous êtes déconnecté(e)."));
  $("alerts-toggle").addEventListener("click", toggleAlerts);
  $("alerts-close").addEventListener("click", toggleAlerts);
  $("back").addEventListener("click", back);
  $("composer").addEventListener("submit", post);
  $("attach-input").addEventListener("change", (event) => {
    const files = [...event.target.files];
    event.target.value = "";   // the same file may be chosen again
    attachFiles(files).catch(() => notify("Envoi du document impossible."));
  });
  $("mute").addEventListener("click", toggleMute);
  $("leave").addEventListener("click", () => { $("leave-confirm").hidden = false; $("leave-confirm").focus(); });
  $("leave-confirm").addEventListener("click", async () => {
    const id = state.current;
    const response = await api(`/api/circles/${id}/members/${state.me.id}`, { method: "DELETE" });
    if (!response.ok) { notify("Impossible de quitter ce cercle."); return; }
    state.circles.delete(id);
    location.hash = "";
  });
  $("search-toggle").addEventListener("click", () => toggleSearch());
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("search-more").addEventListener("click", () => runSearch(state.searching?.oldest));
  $("mail-seen").addEventListener("click", markMailSeen);
  $("new-circle-form").addEventListener("submit", createCircle);
  $("indicators-form").addEventListener("submit", (e) => { e.preventDefault(); loadIndicators(); });
  directorySearch($("nc-search"), $("nc-results"), (idnat) => chosen.has(idnat),
                  (p) => { chosen.set(p.idnat, professionalName(p)); renderChosen(); });
  directorySearch($("ma-search"), $("ma-results"),
                  (idnat) => (state.circles.get(state.current)?.members || []).some((m) => m.id === idnat),
                  (p) => changeMembers("POST", `/api/circles/${state.current}/members`, { id: p.idnat }));
  $("notify-enable").addEventListener("click", enableNotifications);
  setInterval(refreshTimes, 60 * 1000);
  $("reply-cancel").addEventListener("click", () => { cancelReply(); $("text").focus(); });
  $("text").addEventListener("input", announceTyping);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
    if (e.key === "Escape" && state.replyTo) cancelReply();
  });
  $("older").addEventListener("click", () => {
    const circle = state.circles.get(state.current);
    if (circle && circle.firstSeq) {
      request({ type: "history", circle: state.current, before: circle.firstSeq }, { circle: state.current, older: true });
    }
  });
  document.addEventListener("visibilitychange", () => {
    send({ type: "presence", state: document.visibilityState === "visible" ? "online" : "away" });
    if (state.current !== null) markRead(state.current);
  });
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("alerts").hidden) toggleAlerts(); });

  const query = new URLSearchParams(location.search);
  try {
    if (query.has("code") || query.has("error")) await finishSignIn(query);
    else state.session = JSON.parse(sessionStorage.getItem("session") || "null");
  } catch (e) {
    showSignIn(`Connexion impossible : ${e.message}`);
    return;
  }
  if (!state.session) { showSignIn(); return; }
  if (state.session.expiresAt < Date.now() + 5000) {
    try { await tokenRequest({ grant_type: "refresh_token", refresh_token: state.session.refresh }); }
    catch { showSignIn("Votre session a expiré : reconnectez-vous."); return; }
  } else {
    scheduleRefresh();
  }
  $("signin").hidden = true;
  $("circles").hidden = false;
  route();
  connect();
}

start();
