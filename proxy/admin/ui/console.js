// sendguard operator console. Plain JavaScript, no framework, no build step.
//
// Every piece of data comes from the admin API under /v1/ with `Authorization: Bearer <token>`.
// The token is typed once and kept in this tab's sessionStorage: it never goes into a URL or a
// cookie. The page builds DOM nodes (textContent), never HTML strings: the CSP enforces
// Trusted Types, so an HTML sink would throw.
"use strict";

(() => {
  const TOKEN_KEY = "sendguard.console.token";
  const AUTHOR_KEY = "sendguard.console.author";
  const STATE_EVERY_MS = 5000;
  const DECISIONS_EVERY_MS = 1000;
  const MAX_DECISION_ROWS = 200;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    author: "",
    loops: [],
    version: null, // from /v1/decisions when /v1/status does not say
    alertFrom: null, // which refresh raised the top alert (its next success clears it)
    decisionsAfter: 0,
    decisionsPaused: false,
    decisionsBusy: false,
    pendingRelease: null, // the scope whose release awaits confirmation
    killSwitches: [],
    killSignature: null,
    resolving: null, // the ledger entry in the resolve form
  };

  // -- small DOM helpers ------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const cell = (value, className) =>
    el("td", { className }, value === null || value === undefined || value === "" ? "—" : value);

  function badge(text, kind) {
    return el("span", { className: `badge ${kind}` }, text);
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setMessage(node, text) {
    node.textContent = text || "";
    if (node.classList.contains("field-error")) show(node, Boolean(text));
  }

  // Times: the API gives ISO 8601 UTC; an operator in an incident reads UTC.
  function utc(iso) {
    if (!iso) return null;
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function utcTime(epochSeconds) {
    return new Date(epochSeconds * 1000).toISOString().slice(11, 23);
  }

  // Masks a number the way sendguard's logs do (proxy/logs.py mask_phone).
  function maskPhone(value) {
    const cut = value.lastIndexOf(":");
    const prefix = value.slice(0, cut + 1);
    const address = value.slice(cut + 1);
    if (address.length <= 6) return prefix + "*".repeat(address.length);
    return prefix + address.slice(0, 4) + "*".repeat(address.length - 6) + address.slice(-2);
  }

  function maskedScope(scope) {
    const [kind, ...rest] = scope.split(":");
    const value = rest.join(":");
    if (kind === "recipient" || (kind === "sender" && value.startsWith("+"))) {
      return `${kind}:${maskPhone(value)}`;
    }
    return scope;
  }

  // -- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body, token) {
    const headers = {
      Accept: "application/json",
      Authorization: `Bearer ${token || state.token}`,
    };
    const init = {
      method,
      headers,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
      redirect: "error",
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "The admin API is unreachable (is sendguard running?)");
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (error) {
      payload = null;
    }
    if (!response.ok) {
      const message =
        (payload && payload.error && payload.error.message) || `HTTP ${response.status}`;
      if (response.status === 401 && !token) {
        signOut("The admin token was refused (401): sign in again.");
      }
      throw new ApiError(response.status, message);
    }
    return payload;
  }

  function withAuthor(body) {
    return state.author ? { ...body, author: state.author } : body;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") search.set(name, value);
    }
    return search.toString();
  }

  // -- the top-level alert ----------------------------------------------------------------

  function alertError(message, from) {
    const alert = $("alert");
    alert.textContent = message;
    show(alert, Boolean(message));
    state.alertFrom = message ? from || null : null;
  }

  function reportError(error, where) {
    if (error instanceof ApiError && error.status === 401) return; // signOut said it
    alertError(`${where}: ${error.message}`, where);
  }

  function recovered(where) {
    if (state.alertFrom === where) alertError("");
  }

  // -- signing in and out -----------------------------------------------------------------

  async function signIn(token, author, fromStorage) {
    const tokenInput = $("token");
    const tokenError = $("token-error");
    setMessage(tokenError, "");
    tokenInput.removeAttribute("aria-invalid");
    let status;
    try {
      status = await api("GET", "/v1/status", undefined, token);
    } catch (error) {
      sessionStorage.removeItem(TOKEN_KEY);
      clearData();
      const message =
        error.status === 401
          ? "The admin token was refused (401). Check SENDGUARD_ADMIN_TOKEN: nothing is shown without it."
          : `Sign-in failed: ${error.message}`;
      setMessage(tokenError, error.status === 401 ? "This token was refused." : message);
      alertError(message);
      tokenInput.setAttribute("aria-invalid", "true");
      showLogin();
      if (!fromStorage) tokenInput.focus();
      return;
    }
    state.token = token;
    state.author = author;
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(AUTHOR_KEY, author);
    tokenInput.value = "";
    alertError("");
    $("session-who").textContent = author ? `Signed in as ${author}` : "Signed in";
    show($("login-panel"), false);
    show($("session"), true);
    show($("console"), true);
    renderStatus(status);
    $("status-title").focus();
    await Promise.all([refreshKillSwitches(), refreshLedger()]);
    startPolling();
  }

  function signOut(message) {
    stopPolling();
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearData();
    showLogin();
    alertError(message || "");
  }

  function showLogin() {
    show($("console"), false);
    show($("session"), false);
    show($("login-panel"), true);
    const author = sessionStorage.getItem(AUTHOR_KEY);
    if (author && !$("author").value) $("author").value = author;
  }

  function clearData() {
    for (const id of ["status-list", "breaker-list"]) $(id).replaceChildren();
    for (const id of [
      "requests-table",
      "kill-table",
      "suppressions-table",
      "ledger-table",
      "decisions-table",
    ]) {
      $(id).tBodies[0].replaceChildren();
    }
    show($("recipient-result"), false);
    show($("resolve-form"), false);
    state.decisionsAfter = 0;
    state.pendingRelease = null;
    state.resolving = null;
    state.killSignature = null;
    show($("decisions-empty"), true);
    for (const id of ["engage-done", "recipient-done", "ledger-done", "status-updated"]) {
      $(id).textContent = "";
    }
  }

  // -- polling ----------------------------------------------------------------------------

  // One loop per task: the next run is scheduled when this one is done (never piling up).
  function every(ms, firstAfterMs, task) {
    const loop = { stopped: false, timer: null };
    const tick = async () => {
      if (loop.stopped || !state.token) return;
      await task();
      if (!loop.stopped && state.token) loop.timer = setTimeout(tick, ms);
    };
    loop.timer = setTimeout(tick, firstAfterMs);
    state.loops.push(loop);
  }

  function startPolling() {
    stopPolling();
    every(STATE_EVERY_MS, STATE_EVERY_MS, async () => {
      await Promise.all([refreshStatus(), refreshKillSwitches(), refreshLedger()]);
    });
    every(DECISIONS_EVERY_MS, 0, refreshDecisions);
  }

  function stopPolling() {
    for (const loop of state.loops) {
      loop.stopped = true;
      clearTimeout(loop.timer);
    }
    state.loops = [];
  }

  // -- status -----------------------------------------------------------------------------

  const STATUS_LABELS = {
    version: "Version",
    store_mode: "Store mode",
    store_up: "Store reachable",
    pending_outcome_writes: "Pending outcome writes",
    degraded_since: "Degraded since",
    kill_switch_sync: "Kill-switch sync",
    kill_switches: "Kill switches engaged",
    tee: "Status-callback tee",
    instances: "Instances seen",
  };
  const STATUS_SKIP = new Set(["requests_by_decision"]);

  async function refreshStatus() {
    try {
      renderStatus(await api("GET", "/v1/status"));
      recovered("Status");
    } catch (error) {
      reportError(error, "Status");
    }
  }

  function statusValue(name, value) {
    switch (name) {
      case "store_mode":
        return badge(String(value), value === "shared" ? "ok" : "warn");
      case "store_up":
        return value ? badge("yes", "ok") : badge("no: the store is unreachable", "bad");
      case "pending_outcome_writes":
        return value ? badge(String(value), "warn") : "0";
      case "degraded_since":
        return value ? badge(utc(value), "warn") : "—";
      case "kill_switch_sync": {
        if (!value || typeof value !== "object") return String(value);
        const synced = value.synced ? badge("store read ok", "ok") : badge("store read failing", "bad");
        const pushed = value.pushed
          ? badge("live updates on", "ok")
          : badge("live updates off (polling)", "warn");
        return el("span", {}, synced, " ", pushed);
      }
      case "kill_switches": {
        const count = Array.isArray(value) ? value.length : Number(value) || 0;
        if (!count) return badge("none: sends flow", "ok");
        const names = Array.isArray(value) ? value.map((s) => maskedScope(s.scope)).join(", ") : "";
        return badge(`${count} engaged${names ? ": " + names : ""}`, "bad");
      }
      case "tee":
        return value ? "on" : "off";
      default:
        if (value === null || value === undefined) return "—";
        if (Array.isArray(value)) return value.length ? value.map(String).join(", ") : "—";
        if (typeof value === "object") return JSON.stringify(value);
        return String(value);
    }
  }

  function renderStatus(status) {
    const list = $("status-list");
    const nodes = [];
    const names = Object.keys(STATUS_LABELS).filter((name) => name in status);
    for (const name of Object.keys(status)) {
      if (!(name in STATUS_LABELS) && !STATUS_SKIP.has(name)) names.push(name);
    }
    for (const name of names) {
      const words = name.replaceAll("_", " ");
      const label = STATUS_LABELS[name] || words.charAt(0).toUpperCase() + words.slice(1);
      nodes.push(el("dt", {}, label), el("dd", { "data-field": name }, statusValue(name, status[name])));
    }
    if (!("version" in status)) {
      nodes.unshift(el("dt", {}, "Version"), el("dd", { "data-field": "version" }, state.version || "…"));
    }
    list.replaceChildren(...nodes);
    const rows = Object.entries(status.requests_by_decision || {})
      .sort((a, b) => b[1] - a[1])
      .map(([decision, count]) =>
        el("tr", {}, el("td", {}, decision), el("td", { className: "num" }, String(count))),
      );
    $("requests-table").tBodies[0].replaceChildren(...rows);
    show($("requests-table"), rows.length > 0);
    show($("requests-title"), rows.length > 0);
    $("status-updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  }

  // -- kill switches ----------------------------------------------------------------------

  const SCOPE_HINTS = {
    account: "AC followed by 32 hex digits",
    sender: "+14155550100, a short code, MG… or an alphanumeric sender ID",
    recipient: "+14155550100 (E.164)",
    prefix: "+ and 1 to 6 digits, e.g. +44",
  };

  async function refreshKillSwitches() {
    try {
      const body = await api("GET", "/v1/kill-switches");
      const switches = body.kill_switches || [];
      const signature = JSON.stringify(switches);
      state.killSwitches = switches;
      // Unchanged: leave the table alone (a release being confirmed keeps its typed reason).
      if (signature !== state.killSignature) renderKillSwitches();
      state.killSignature = signature;
      recovered("Kill switches");
    } catch (error) {
      reportError(error, "Kill switches");
    }
  }

  function renderKillSwitches() {
    const rows = state.killSwitches.map((ks) => {
      let action;
      if (ks.source === "config") {
        action = el("span", { className: "hint" }, "set in config (SENDGUARD_KILL_SWITCH)");
      } else if (state.pendingRelease === ks.scope) {
        const reasonId = `release-reason-${ks.scope.replace(/[^A-Za-z0-9]/g, "-")}`;
        action = el(
          "div",
          { className: "inline-confirm" },
          el("label", { for: reasonId, className: "visually-hidden" }, "Release reason"),
          el("input", { id: reasonId, type: "text", placeholder: "reason (optional)", autocomplete: "off" }),
          el("button", {
            type: "button",
            className: "danger small",
            "data-action": "confirm-release",
            text: `Confirm release of ${maskedScope(ks.scope)}`,
            onclick: () => release(ks.scope, $(reasonId).value.trim()),
          }),
          el("button", {
            type: "button",
            className: "secondary small",
            text: "Cancel",
            onclick: () => {
              state.pendingRelease = null;
              renderKillSwitches();
            },
          }),
        );
      } else {
        action = el("button", {
          type: "button",
          className: "secondary small",
          "data-action": "release",
          "aria-label": `Release ${maskedScope(ks.scope)}`,
          text: "Release…",
          onclick: () => {
            state.pendingRelease = ks.scope;
            renderKillSwitches();
            const confirm = document.querySelector('#kill-table [data-action="confirm-release"]');
            if (confirm) confirm.focus();
          },
        });
      }
      return el(
        "tr",
        { "data-scope": maskedScope(ks.scope) },
        el("td", {}, badge(maskedScope(ks.scope), ks.scope === "global" ? "bad" : "warn")),
        cell(ks.reason),
        cell(ks.author),
        cell(utc(ks.created)),
        cell(ks.expires ? utc(ks.expires) : "until released"),
        el("td", {}, action),
      );
    });
    const keep = document.activeElement;
    $("kill-table").tBodies[0].replaceChildren(...rows);
    if (keep && !document.contains(keep) && state.pendingRelease) {
      const confirm = document.querySelector('#kill-table [data-action="confirm-release"]');
      if (confirm) confirm.focus();
    }
    show($("kill-table"), rows.length > 0);
    show($("kill-empty"), rows.length === 0);
  }

  async function release(scope, reason) {
    try {
      const body = await api(
        "DELETE",
        `/v1/kill-switches/${encodeURIComponent(scope)}`,
        withAuthor(reason ? { reason } : {}),
      );
      state.pendingRelease = null;
      $("engage-done").textContent = body.released
        ? `Released ${maskedScope(scope)}.`
        : `${maskedScope(scope)} was not engaged.`;
      alertError("");
    } catch (error) {
      reportError(error, "Release");
    }
    await Promise.all([refreshKillSwitches(), refreshStatus()]);
    $("kill-title").focus();
  }

  function updateEngageForm() {
    const kind = $("engage-kind").value;
    const isGlobal = kind === "global";
    show($("engage-value-field"), !isGlobal);
    show($("engage-confirm-field"), isGlobal);
    $("engage-value-hint").textContent = SCOPE_HINTS[kind] || "";
  }

  function fieldError(form, input, errorNode, message) {
    setMessage(errorNode, message);
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  async function engage(event) {
    event.preventDefault();
    const form = $("engage-form");
    const errorNode = $("engage-error");
    $("engage-done").textContent = "";
    const kind = $("engage-kind").value;
    const value = $("engage-value").value.trim();
    const reason = $("engage-reason").value.trim();
    const ttl = $("engage-ttl").value.trim();
    if (kind !== "global" && !value) {
      return fieldError(form, $("engage-value"), errorNode, `Give the ${kind} to stop (${SCOPE_HINTS[kind]}).`);
    }
    if (!reason) {
      return fieldError(form, $("engage-reason"), errorNode, "Give a reason: it goes to the audit log.");
    }
    if (kind === "global" && $("engage-confirm").value.trim() !== "global") {
      return fieldError(
        form,
        $("engage-confirm"),
        errorNode,
        'Type "global" in the confirmation field: this stops every guarded send.',
      );
    }
    fieldError(form, null, errorNode, "");
    const scope = kind === "global" ? "global" : `${kind}:${value}`;
    const submit = $("engage-submit");
    submit.disabled = true;
    try {
      const body = await api("POST", "/v1/kill-switches", withAuthor({ scope, reason, ttl: ttl || undefined }));
      const engaged = body.kill_switch;
      $("engage-done").textContent =
        `Engaged ${maskedScope(engaged.scope)}` +
        (engaged.expires ? `, expires ${utc(engaged.expires)}.` : ", until released.") +
        (body.replaced ? " (It replaced the switch on the same scope.)" : "");
      $("engage-reason").value = "";
      $("engage-ttl").value = "";
      $("engage-confirm").value = "";
      $("engage-value").value = "";
      alertError("");
    } catch (error) {
      if (error.status === 401) return;
      fieldError(form, null, errorNode, `Not engaged: ${error.message}`);
    } finally {
      submit.disabled = false;
    }
    await Promise.all([refreshKillSwitches(), refreshStatus()]);
  }

  // -- recipient: breaker and suppressions ------------------------------------------------

  function recipientParams() {
    return { account: $("recipient-account").value.trim(), to: $("recipient-to").value.trim() };
  }

  async function lookUpRecipient(event) {
    if (event) {
      event.preventDefault(); // a new lookup (not the refresh after a change)
      $("recipient-done").textContent = "";
    }
    const form = $("recipient-form");
    const errorNode = $("recipient-error");
    const { account, to } = recipientParams();
    if (!account) return fieldError(form, $("recipient-account"), errorNode, "Give the account SID (AC…).");
    if (!to) return fieldError(form, $("recipient-to"), errorNode, "Give the recipient's number.");
    fieldError(form, null, errorNode, "");
    try {
      const qs = query({ account, to });
      const [breaker, suppressions] = await Promise.all([
        api("GET", `/v1/breakers?${qs}`),
        api("GET", `/v1/suppressions?${qs}`),
      ]);
      renderRecipient(breaker, suppressions);
    } catch (error) {
      if (error.status === 401) return;
      show($("recipient-result"), false);
      fieldError(form, null, errorNode, `Lookup failed: ${error.message}`);
    }
  }

  function renderRecipient(breaker, suppressions) {
    $("recipient-masked").textContent = breaker.to;
    const stateKind = { closed: "ok", "half-open": "warn", open: "bad" }[breaker.state] || "neutral";
    const windows = Object.entries(breaker.sends_in_windows || {})
      .map(([label, count]) => `${count} in ${label}`)
      .join(", ");
    const facts = [
      ["State", badge(breaker.state, stateKind)],
      ["Open until", utc(breaker.open_until) || "—"],
      ["Trips", String(breaker.trips)],
      ["Probe in flight", breaker.probe_in_flight ? "yes" : "no"],
      ["Sends in windows", windows || "—"],
      ["Limits", (breaker.limits || []).join(", ") || "—"],
    ];
    $("breaker-list").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const rows = (suppressions.suppressions || []).map((s) =>
      el(
        "tr",
        {},
        cell(s.scope),
        cell(s.field),
        cell(String(s.code)),
        cell(s.source),
        cell(utc(s.until)),
        el("td", {}, s.active ? badge("active", "bad") : badge("expired", "neutral")),
      ),
    );
    $("suppressions-table").tBodies[0].replaceChildren(...rows);
    show($("suppressions-table"), rows.length > 0);
    show($("suppressions-empty"), rows.length === 0);
    show($("recipient-result"), true);
  }

  async function recipientChange(path, what) {
    const { account, to } = recipientParams();
    try {
      const body = await api("DELETE", `${path}?${query({ account, to })}`, withAuthor({}));
      $("recipient-done").textContent =
        path === "/v1/breakers"
          ? body.reset ? `Breaker of ${body.to} reset.` : `The breaker of ${body.to} was not set.`
          : `Cleared ${body.cleared} suppression(s) of ${body.to}.`;
      await lookUpRecipient();
    } catch (error) {
      reportError(error, what);
    }
  }

  // -- the UNKNOWN ledger -----------------------------------------------------------------

  async function refreshLedger() {
    try {
      renderLedger(await api("GET", "/v1/records?state=unknown"));
      recovered("UNKNOWN ledger");
    } catch (error) {
      reportError(error, "UNKNOWN ledger");
    }
  }

  function renderLedger(body) {
    const entries = body.records || [];
    const rows = entries.map((entry) =>
      el(
        "tr",
        { "data-record": entry.id },
        cell(utc(entry.claimed_at)),
        el("td", { className: "mono" }, entry.account || "—"),
        cell(entry.to),
        cell(entry.from),
        cell(entry.route),
        cell(entry.reason),
        el("td", { className: "num" }, String(entry.reconciliations ?? 0)),
        el("td", { className: "mono" }, entry.resolved_sid || "—"),
        el(
          "td",
          {},
          el("button", {
            type: "button",
            className: "secondary small",
            "aria-label": `Resolve the send to ${entry.to || "?"} claimed ${utc(entry.claimed_at)}`,
            text: "Resolve…",
            onclick: () => openResolve(entry),
          }),
        ),
      ),
    );
    $("ledger-table").tBodies[0].replaceChildren(...rows);
    show($("ledger-table"), rows.length > 0);
    show($("ledger-empty"), rows.length === 0);
    show($("ledger-truncated"), Boolean(body.truncated));
  }

  function openResolve(entry) {
    state.resolving = entry;
    $("resolve-what").textContent = `the send to ${entry.to || "?"} (${entry.route || "?"})`;
    $("resolve-id").textContent = entry.id;
    for (const id of ["resolve-sent", "resolve-not-sent"]) $(id).checked = false;
    $("resolve-sid").value = "";
    $("resolve-reason").value = "";
    setMessage($("resolve-error"), "");
    $("ledger-done").textContent = "";
    updateResolveForm();
    show($("resolve-form"), true);
    $("resolve-title").focus();
  }

  function closeResolve() {
    state.resolving = null;
    show($("resolve-form"), false);
  }

  function updateResolveForm() {
    show($("resolve-sid-field"), $("resolve-sent").checked);
  }

  async function resolve(event) {
    event.preventDefault();
    const form = $("resolve-form");
    const errorNode = $("resolve-error");
    const entry = state.resolving;
    if (!entry) return;
    const outcome = $("resolve-sent").checked ? "sent" : $("resolve-not-sent").checked ? "not-sent" : null;
    const sid = $("resolve-sid").value.trim();
    const reason = $("resolve-reason").value.trim();
    if (!outcome) return fieldError(form, $("resolve-sent"), errorNode, "Choose sent or not sent.");
    if (outcome === "sent" && !sid) {
      return fieldError(form, $("resolve-sid"), errorNode, "Give the Message SID the Twilio console shows (SM…).");
    }
    if (!reason) return fieldError(form, $("resolve-reason"), errorNode, "Give a reason: what you checked, a ticket.");
    fieldError(form, null, errorNode, "");
    const payload = withAuthor(outcome === "sent" ? { outcome, message_sid: sid, reason } : { outcome, reason });
    try {
      const body = await api("POST", `/v1/records/${encodeURIComponent(entry.id)}/resolve`, payload);
      closeResolve();
      $("ledger-done").textContent = `Resolved ${outcome} (${body.record.to || "?"}): ${body.next_retry}.`;
      alertError("");
    } catch (error) {
      if (error.status === 401) return;
      fieldError(form, null, errorNode, `Not resolved: ${error.message}`);
    }
    await refreshLedger();
    if (!state.resolving) $("ledger-title").focus();
  }

  // -- recent decisions -------------------------------------------------------------------

  const DECISION_KINDS = {
    forwarded: "ok",
    replayed: "ok",
    passthrough: "neutral",
    callback: "neutral",
    killed: "bad",
    "breaker-open": "bad",
    suppressed: "bad",
    "rate-limited": "warn",
    "outcome-unknown": "bad",
    "in-flight": "warn",
    "store-unavailable": "bad",
  };

  async function refreshDecisions() {
    if (state.decisionsPaused || state.decisionsBusy) return;
    state.decisionsBusy = true;
    try {
      const body = await api("GET", `/v1/decisions?${query({ after: state.decisionsAfter })}`);
      state.version = body.version;
      $("decisions-capacity").textContent = String(body.capacity);
      if (body.restarted) $("decisions-table").tBodies[0].replaceChildren();
      $("decisions-missed").textContent = body.missed
        ? `${body.missed} decision(s) went by faster than this page reads.`
        : "";
      state.decisionsAfter = body.next;
      renderDecisions(body.decisions || []);
      showVersion();
      recovered("Recent decisions");
    } catch (error) {
      reportError(error, "Recent decisions");
    } finally {
      state.decisionsBusy = false;
    }
  }

  function renderDecisions(decisions) {
    const tbody = $("decisions-table").tBodies[0];
    const fresh = decisions.map((d) =>
      el(
        "tr",
        { className: "fresh", "data-decision": d.decision },
        cell(utcTime(d.time), "mono"),
        el("td", {}, badge(d.decision, DECISION_KINDS[d.decision] || (d.status >= 500 ? "bad" : "neutral"))),
        cell(d.reason),
        el("td", { className: "num" }, String(d.status)),
        cell(d.method),
        cell(d.route),
        cell(d.account, "mono"),
        cell(d.to),
        cell(d.request_id, "mono"),
      ),
    );
    fresh.reverse(); // newest first
    if (fresh.length) tbody.prepend(...fresh);
    while (tbody.rows.length > MAX_DECISION_ROWS) tbody.lastElementChild.remove();
    show($("decisions-empty"), tbody.rows.length === 0);
  }

  function showVersion() {
    const dd = document.querySelector('#status-list dd[data-field="version"]');
    if (dd && state.version && dd.textContent === "…") dd.textContent = state.version;
  }

  function togglePause() {
    state.decisionsPaused = !state.decisionsPaused;
    const button = $("decisions-pause");
    button.setAttribute("aria-pressed", String(state.decisionsPaused));
    button.textContent = state.decisionsPaused ? "Resume" : "Pause";
  }

  // -- wiring -----------------------------------------------------------------------------

  function start() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) {
        setMessage($("token-error"), "Enter the admin token.");
        $("token").setAttribute("aria-invalid", "true");
        $("token").focus();
        return;
      }
      signIn(token, $("author").value.trim(), false);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("engage-kind").addEventListener("change", updateEngageForm);
    $("engage-form").addEventListener("submit", engage);
    $("kill-refresh").addEventListener("click", refreshKillSwitches);
    $("recipient-form").addEventListener("submit", lookUpRecipient);
    $("breaker-reset").addEventListener("click", () => recipientChange("/v1/breakers", "Reset breaker"));
    $("suppressions-clear").addEventListener("click", () =>
      recipientChange("/v1/suppressions", "Clear suppressions"),
    );
    $("ledger-refresh").addEventListener("click", refreshLedger);
    $("resolve-form").addEventListener("submit", resolve);
    $("resolve-cancel").addEventListener("click", closeResolve);
    for (const id of ["resolve-sent", "resolve-not-sent"]) $(id).addEventListener("change", updateResolveForm);
    $("decisions-pause").addEventListener("click", togglePause);
    updateEngageForm();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved, sessionStorage.getItem(AUTHOR_KEY) || "", true);
    else {
      showLogin();
      $("token").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
