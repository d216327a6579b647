"use strict";
// The audit log viewer (served at /ui/ with api.ui = true; docs/ui.md).
//
// It reads only through the query API that clients use, with the caller's own token:
// ListAuditLogs (Connect JSON) for the table, the NDJSON export for the histogram and the
// download. The server authorizes every call; this page only hides what it was refused.
//
// Everything that comes from an event is untrusted: it is written with textContent (or an
// SVG <title>'s textContent) only, never as HTML.
const TOKEN_KEY = "audit-relay.token";
const LIST_URL = "/gitpod.v1.AuditLogService/ListAuditLogs";
const SESSION_URL = "/ui/api/session";
const HOUR_MS = 3600000;
// The histogram reads the range's events through one export; past this many it stops
// and says it covers only the newest ones.
const HISTOGRAM_CAP = 100000;
// More buckets than this and each bar spans several hours.
const MAX_BARS = 2400;
const RANGES = {
    "24h": 24 * HOUR_MS,
    "7d": 7 * 24 * HOUR_MS,
    "30d": 30 * 24 * HOUR_MS,
    "90d": 90 * 24 * HOUR_MS,
};
// The platform's action names, suggested in the action filter (any name may be typed).
const ACTIONS = [
    "startWorkspace",
    "stopWorkspace",
    "deleteWorkspace",
    "getTeamProjects",
    "setTeamMemberRole",
    "removeTeamMember",
    "updateOrgSettings",
    "createTeam",
    "deleteTeam",
    "gitpod.v1.WorkspaceService/startWorkspace",
    "gitpod.v1.WorkspaceService/stopWorkspace",
    "gitpod.v1.WorkspaceService/deleteWorkspace",
    "gitpod.v1.OrganizationService/updateOrganizationSettings",
    "gitpod.v1.OrganizationService/setOrganizationMemberRole",
    "gitpod.v1.AuditLogService/listAuditLogs",
];
/** A 401 or 403 from the server: the page shows why and no data. */
class Refused extends Error {
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}
function byId(id) {
    const e = document.getElementById(id);
    if (!e)
        throw new Error(`the page lacks #${id}`);
    return e;
}
function show(id, visible) {
    byId(id).hidden = !visible;
}
function text(id, s) {
    byId(id).textContent = s;
}
function setStatus(s, error = false) {
    const e = byId("status");
    e.textContent = s;
    e.classList.toggle("error", error);
}
function token() {
    return sessionStorage.getItem(TOKEN_KEY);
}
function requestHeaders() {
    // The header lets the server take the token from api.ui_token_cookie when there is
    // no Authorization header; a cross-site page cannot send it.
    const h = { "X-Audit-Relay-UI": "1" };
    const t = token();
    if (t)
        h["Authorization"] = `Bearer ${t}`;
    return h;
}
async function errorMessage(r) {
    try {
        const j = await r.json();
        if (j && typeof j.message === "string")
            return j.message;
    }
    catch {
        // not JSON
    }
    return `HTTP ${r.status}`;
}
async function call(url, init = {}) {
    const r = await fetch(url, {
        ...init,
        headers: { ...requestHeaders(), ...init.headers },
        credentials: "same-origin",
        cache: "no-store",
    });
    if (r.status === 401 || r.status === 403)
        throw new Refused(r.status, await errorMessage(r));
    if (!r.ok)
        throw new Error(`${r.status}: ${await errorMessage(r)}`);
    return r;
}
// ---- state -------------------------------------------------------------------------
let session = null;
let filter = null;
// pageTokens[i] is the token that reads page i (page 0: none); no offsets anywhere.
let pageTokens = [""];
let pageIndex = 0;
let shown = [];
let histogramAbort = null;
// Bumped on every new filter, so an answer to an older one is dropped.
let generation = 0;
// ---- time --------------------------------------------------------------------------
function iso(ms) {
    return new Date(ms).toISOString();
}
/** `<input type=datetime-local>` value of `ms`, in UTC. */
function localValue(ms) {
    return iso(ms).slice(0, 19);
}
function parseLocal(v) {
    if (!v)
        return NaN;
    return Date.parse((v.length === 16 ? v + ":00" : v) + "Z");
}
function shortTime(ts) {
    return ts.replace("T", " ").replace("Z", "");
}
// ---- the URL's fragment keeps the filter (never sent to the server) ----------------
function readFragment() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
}
function writeFragment(f, range) {
    const p = new URLSearchParams();
    p.set("org", f.org);
    p.set("range", range);
    if (range === "custom") {
        p.set("from", iso(f.fromMs));
        p.set("to", iso(f.toMs));
    }
    if (f.actor)
        p.set("actor", f.actor);
    if (f.action)
        p.set("action", f.action);
    p.set("size", String(f.size));
    history.replaceState(null, "", "#" + p.toString());
}
// ---- pages -------------------------------------------------------------------------
function showOnly(id) {
    for (const s of ["signin", "denied", "viewer"])
        show(s, s === id);
}
function clearData() {
    shown = [];
    byId("events").querySelector("tbody").replaceChildren();
    const svg = byId("histogram");
    svg.replaceChildren();
    delete svg.dataset.total;
    for (const id of ["hist-summary", "hist-from", "hist-to", "page-info"])
        text(id, "");
    show("detail", false);
    show("empty", false);
    byId("older").disabled = true;
    byId("newer").disabled = true;
}
function showSignIn(note) {
    clearData();
    session = null;
    show("forget", false);
    show("scope", false);
    text("who", "");
    if (note)
        text("signin-note", note);
    showOnly("signin");
}
function showDenied(e) {
    generation++;
    histogramAbort?.abort();
    clearData();
    if (e.status === 401) {
        text("denied-title", "Your token was refused");
        text("denied-text", `The server did not accept this token (${e.message}). It may have expired, or it is not a token this server knows. No event is shown.`);
        show("denied-back", false);
    }
    else {
        text("denied-title", "Not allowed");
        text("denied-text", `This token may not read that organization's audit log (${e.message}). Only the organization's owners, and operator tokens that list it, may read it. No event is shown.`);
        show("denied-back", session !== null);
    }
    showOnly("denied");
}
function fail(e) {
    if (e instanceof Refused)
        showDenied(e);
    else if (!(e instanceof DOMException && e.name === "AbortError"))
        setStatus(String(e instanceof Error ? e.message : e), true);
}
// ---- session -----------------------------------------------------------------------
async function start() {
    try {
        const r = await call(SESSION_URL);
        session = (await r.json());
    }
    catch (e) {
        if (e instanceof Refused && token() === null) {
            showSignIn();
        }
        else {
            fail(e);
        }
        return;
    }
    text("who", `signed in as ${session.actor}`);
    show("forget", token() !== null);
    const scope = byId("scope");
    if (session.store === "postgres") {
        scope.textContent = "Whole installation: every relay's events (installation store)";
        scope.classList.add("installation");
    }
    else {
        scope.textContent = "One relay's spool only: events of the pod this relay runs beside, not the whole installation";
        scope.classList.remove("installation");
    }
    show("scope", true);
    fillOrganizations(session);
    restoreFilter();
    showOnly("viewer");
    if (currentOrg())
        await apply();
    else
        setStatus(session.allOrganizations ? "Type an organization id." : "Choose an organization.");
}
function fillOrganizations(s) {
    const select = byId("org");
    select.replaceChildren();
    for (const o of s.organizations) {
        const opt = document.createElement("option");
        opt.value = o;
        opt.textContent = o;
        select.append(opt);
    }
    const other = document.createElement("option");
    other.value = "";
    other.textContent = s.allOrganizations ? "type an organization id…" : "other…";
    select.append(other);
    if (s.organizations.length === 0)
        select.value = "";
    orgPickerChanged();
}
function orgPickerChanged() {
    show("org-input", byId("org").value === "");
}
function currentOrg() {
    const v = byId("org").value;
    return (v || byId("org-input").value).trim();
}
function restoreFilter() {
    const p = readFragment();
    const org = p.get("org");
    if (org) {
        const select = byId("org");
        if (session && session.organizations.includes(org))
            select.value = org;
        else {
            select.value = "";
            byId("org-input").value = org;
        }
        orgPickerChanged();
    }
    const range = p.get("range");
    if (range && (range in RANGES || range === "custom"))
        byId("range").value = range;
    const from = Date.parse(p.get("from") ?? "");
    const to = Date.parse(p.get("to") ?? "");
    if (!isNaN(from))
        byId("from").value = localValue(from);
    if (!isNaN(to))
        byId("to").value = localValue(to);
    byId("actor").value = p.get("actor") ?? "";
    byId("action").value = p.get("action") ?? "";
    const size = p.get("size");
    if (size && ["25", "50", "100", "250"].includes(size))
        byId("size").value = size;
    rangeChanged();
}
function rangeChanged() {
    const range = byId("range").value;
    const custom = range === "custom";
    if (custom && !byId("from").value) {
        const now = Date.now();
        byId("from").value = localValue(now - RANGES["7d"]);
        byId("to").value = localValue(now);
    }
    show("custom", custom);
}
function readFilter() {
    const org = currentOrg();
    if (!org)
        return "Choose or type an organization.";
    const range = byId("range").value;
    let fromMs;
    let toMs;
    if (range === "custom") {
        fromMs = parseLocal(byId("from").value);
        toMs = parseLocal(byId("to").value);
        if (isNaN(fromMs) || isNaN(toMs))
            return "Give both ends of the custom range.";
        if (fromMs >= toMs)
            return "The range's start must be before its end.";
    }
    else {
        toMs = Date.now();
        fromMs = toMs - RANGES[range];
    }
    return {
        org,
        fromMs,
        toMs,
        actor: byId("actor").value.trim(),
        action: byId("action").value.trim(),
        size: Number(byId("size").value),
    };
}
async function apply() {
    const f = readFilter();
    if (typeof f === "string") {
        setStatus(f, true);
        return;
    }
    filter = f;
    writeFragment(f, byId("range").value);
    generation++;
    pageTokens = [""];
    pageIndex = 0;
    clearData();
    setStatus("Loading…");
    const g = generation;
    await Promise.all([loadPage(g), loadHistogram(g)]);
}
// ---- the table ---------------------------------------------------------------------
function listBody(f, pageToken) {
    const b = {
        organizationId: f.org,
        from: iso(f.fromMs),
        to: iso(f.toMs),
        pagination: { pageSize: f.size, token: pageToken },
    };
    if (f.actor)
        b.actorId = f.actor;
    if (f.action)
        b.action = f.action;
    return JSON.stringify(b);
}
async function loadPage(g) {
    const f = filter;
    if (!f)
        return;
    try {
        const r = await call(LIST_URL, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: listBody(f, pageTokens[pageIndex]),
        });
        const j = (await r.json());
        if (g !== generation)
            return;
        const next = j.pagination?.nextToken ?? "";
        pageTokens.length = pageIndex + 1;
        if (next)
            pageTokens.push(next);
        renderPage(j.auditLogs ?? [], next !== "");
        setStatus("");
        // For tests and scripts that wait on the page: pages shown so far.
        document.body.dataset.pages = String(Number(document.body.dataset.pages ?? "0") + 1);
    }
    catch (e) {
        if (g === generation)
            fail(e);
    }
}
function cell(tr, s) {
    const td = document.createElement("td");
    td.textContent = s;
    td.title = s;
    tr.append(td);
}
function renderPage(logs, more) {
    shown = logs;
    const tbody = byId("events").querySelector("tbody");
    tbody.replaceChildren();
    logs.forEach((e, i) => {
        const tr = document.createElement("tr");
        tr.tabIndex = 0;
        tr.dataset.index = String(i);
        cell(tr, shortTime(e.timestamp));
        cell(tr, e.action);
        cell(tr, e.actorId);
        cell(tr, e.id);
        tbody.append(tr);
    });
    show("empty", logs.length === 0);
    show("detail", false);
    byId("older").disabled = !more;
    byId("newer").disabled = pageIndex === 0;
    const first = pageIndex * (filter?.size ?? 0);
    text("page-info", logs.length === 0 ? `page ${pageIndex + 1}` : `page ${pageIndex + 1} · events ${first + 1}–${first + logs.length}, newest first`);
}
function select(i) {
    const e = shown[i];
    if (!e)
        return;
    for (const tr of byId("events").querySelectorAll("tbody tr")) {
        tr.classList.toggle("selected", tr.dataset.index === String(i));
    }
    text("d-timestamp", e.timestamp);
    text("d-action", e.action);
    text("d-actor", e.actorId);
    text("d-org", e.organizationId);
    text("d-id", e.id);
    let args = e.args;
    try {
        args = JSON.stringify(JSON.parse(e.args), null, 2);
    }
    catch {
        // shown as it came
    }
    text("d-args", args);
    show("detail", true);
}
// ---- the histogram and the download: the export endpoint ---------------------------
function exportUrl(f) {
    const p = new URLSearchParams({ from: iso(f.fromMs), to: iso(f.toMs) });
    if (f.actor)
        p.set("actorId", f.actor);
    if (f.action)
        p.set("action", f.action);
    return `/v1/organizations/${encodeURIComponent(f.org)}/audit-logs/export?${p.toString()}`;
}
async function exportResponse(f, signal) {
    // Exports are limited per caller (api.max_exports_per_caller): wait for a slot a little.
    for (let attempt = 0;; attempt++) {
        const r = await fetch(exportUrl(f), {
            headers: requestHeaders(),
            credentials: "same-origin",
            cache: "no-store",
            signal,
        });
        if (r.status === 429 && attempt < 5) {
            await new Promise((res) => setTimeout(res, 400 * (attempt + 1)));
            continue;
        }
        if (r.status === 401 || r.status === 403)
            throw new Refused(r.status, await errorMessage(r));
        if (!r.ok)
            throw new Error(`export: ${r.status}: ${await errorMessage(r)}`);
        return r;
    }
}
async function loadHistogram(g) {
    const f = filter;
    if (!f)
        return;
    histogramAbort?.abort();
    const abort = new AbortController();
    histogramAbort = abort;
    const span = Math.max(1, Math.ceil((f.toMs - Math.floor(f.fromMs / HOUR_MS) * HOUR_MS) / HOUR_MS));
    const hoursPerBar = Math.ceil(span / MAX_BARS);
    const bucketMs = hoursPerBar * HOUR_MS;
    const origin = Math.floor(f.fromMs / HOUR_MS) * HOUR_MS;
    const counts = new Array(Math.ceil((f.toMs - origin) / bucketMs) || 1).fill(0);
    let total = 0;
    let capped = false;
    let oldest = "";
    text("hist-title", hoursPerBar === 1 ? "Events per hour" : `Events per ${hoursPerBar} hours`);
    text("hist-summary", "Counting…");
    try {
        const r = await exportResponse(f, abort.signal);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let rest = "";
        const take = (line) => {
            if (!line)
                return true;
            const e = JSON.parse(line);
            const ms = Date.parse(e.timestamp);
            const b = Math.floor((ms - origin) / bucketMs);
            if (b >= 0 && b < counts.length)
                counts[b]++;
            total++;
            oldest = e.timestamp;
            return total < HISTOGRAM_CAP;
        };
        reading: for (;;) {
            const { done, value } = await reader.read();
            if (g !== generation) {
                abort.abort();
                return;
            }
            rest += decoder.decode(value ?? new Uint8Array(), { stream: !done });
            const lines = rest.split("\n");
            rest = done ? "" : lines.pop();
            for (const l of lines) {
                if (!take(l)) {
                    capped = true;
                    abort.abort();
                    break reading;
                }
            }
            if (done)
                break;
        }
    }
    catch (e) {
        if (g === generation && !capped) {
            text("hist-summary", "");
            fail(e);
        }
        if (!capped)
            return;
    }
    if (g !== generation)
        return;
    drawHistogram(counts, origin, bucketMs, f);
    const svg = byId("histogram");
    svg.dataset.total = String(total);
    text("hist-summary", capped
        ? `The histogram covers only the newest ${total.toLocaleString("en")} events (back to ${shortTime(oldest)} UTC); the range holds more.`
        : `${total.toLocaleString("en")} events in this range${f.actor || f.action ? " matching the filters" : ""}.`);
}
function drawHistogram(counts, origin, bucketMs, f) {
    const svg = byId("histogram");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${counts.length} 100`);
    const max = Math.max(1, ...counts);
    counts.forEach((n, i) => {
        if (n === 0)
            return;
        const h = Math.max(2, (n / max) * 100);
        const rect = document.createElementNS(ns, "rect");
        rect.setAttribute("x", String(i + 0.1));
        rect.setAttribute("width", "0.8");
        rect.setAttribute("y", String(100 - h));
        rect.setAttribute("height", String(h));
        rect.setAttribute("data-count", String(n));
        rect.setAttribute("data-start", iso(origin + i * bucketMs));
        const title = document.createElementNS(ns, "title");
        title.textContent = `${shortTime(iso(origin + i * bucketMs)).slice(0, 16)} UTC: ${n} events`;
        rect.append(title);
        svg.append(rect);
    });
    text("hist-from", `${shortTime(iso(f.fromMs)).slice(0, 16)} UTC`);
    text("hist-to", `${shortTime(iso(f.toMs)).slice(0, 16)} UTC · highest bar ${max}`);
}
async function download() {
    const f = filter;
    if (!f) {
        setStatus("Show a range first.", true);
        return;
    }
    setStatus("Preparing the download…");
    try {
        const r = await exportResponse(f);
        const blob = await r.blob();
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = `audit-log-${f.org}-${iso(f.fromMs)}-${iso(f.toMs)}.ndjson`.replace(/:/g, "");
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 60000);
        setStatus(`Downloaded ${blob.size.toLocaleString("en")} bytes of NDJSON.`);
    }
    catch (e) {
        fail(e);
    }
}
// ---- wiring ------------------------------------------------------------------------
function wire() {
    const actions = byId("actions");
    for (const a of ACTIONS) {
        const o = document.createElement("option");
        o.value = a;
        actions.append(o);
    }
    byId("signin-form").addEventListener("submit", (ev) => {
        ev.preventDefault();
        const t = byId("token").value.trim().replace(/^Bearer\s+/i, "");
        if (!t)
            return;
        sessionStorage.setItem(TOKEN_KEY, t);
        byId("token").value = "";
        void start();
    });
    const forget = () => {
        sessionStorage.removeItem(TOKEN_KEY);
        showSignIn();
    };
    byId("forget").addEventListener("click", forget);
    byId("denied-token").addEventListener("click", forget);
    byId("denied-back").addEventListener("click", () => {
        clearData();
        showOnly("viewer");
        setStatus("Choose an organization.");
    });
    byId("filters").addEventListener("submit", (ev) => {
        ev.preventDefault();
        void apply();
    });
    byId("org").addEventListener("change", orgPickerChanged);
    byId("range").addEventListener("change", rangeChanged);
    byId("download").addEventListener("click", () => void download());
    byId("older").addEventListener("click", () => {
        if (pageIndex + 1 < pageTokens.length) {
            pageIndex++;
            void loadPage(generation);
        }
    });
    byId("newer").addEventListener("click", () => {
        if (pageIndex > 0) {
            pageIndex--;
            void loadPage(generation);
        }
    });
    const tbody = byId("events").querySelector("tbody");
    const pick = (ev) => {
        const tr = ev.target.closest("tr");
        if (tr && tr.dataset.index !== undefined)
            select(Number(tr.dataset.index));
    };
    tbody.addEventListener("click", pick);
    tbody.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter")
            pick(ev);
    });
}
wire();
void start();
