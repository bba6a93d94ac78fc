// relay-client.js: follow the stack's messages from a browser, losing and repeating none.
//
// An ES module with no dependencies and no build step. The list API serves it at /relay-client.js
// (with CORS, so a page anywhere can import it from there); or copy it beside your own page.
// The websocket protocol it speaks is described at GET /asyncapi.json on the websocket server.
//
//   import { RelayClient } from "http://127.0.0.1:5001/relay-client.js";
//   const client = new RelayClient({ api: "http://127.0.0.1:5001", ws: "ws://127.0.0.1:8765",
//                                    channels: ["orders"], token: null });
//   client.addEventListener("history", (e) => e.detail.messages.forEach(show));  // oldest first
//   client.addEventListener("message", (e) => show(e.detail.message));          // live, in order
//   client.start();  // ... client.close();
//
// What it does: lists the newest page of history from the list API, then connects the websocket
// with ?after= a resume point (see resumePoint), so the server replays what the listing had not
// caught yet; on a drop it reconnects with backoff and ?after= the last id it got, and on a
// `reset` frame it fills the gap from the list API. Every message is handed out once (by id).
//
// Events (CustomEvent, the data in `detail`):
//   history  {messages, page, first}  listed messages not handed out before, oldest first; `page` is
//                                     the list API's page (`next_cursor`, `has_more`); `first`: the
//                                     first backfill of this client (where "load older" starts)
//   message  {message}                a live message not handed out before
//   state    {state, code, reason, opened, retryIn, afterDrop}  state is "connecting", "catching up"
//                                     (resuming from an id), "live", "disconnected" (retrying in
//                                     `retryIn` ms) or "refused" (not retried: see `refusal`)
//   refused  {status, body}           the token was refused (401/403 with the services' JSON body) or
//                                     expired (close code 4401: status 401, body.error "token_expired")
//   reset    {reason, again}          the server could not resume (`unknown_or_expired_id`) or fell
//                                     behind (`server_fell_behind`); history is being refilled
//   position {lastId}                 where a reconnection would resume
//   error    {error, during}          history could not be listed ("backfill"); live goes on

export const TOKEN_EXPIRED = 4401;

// Storage order is not accept order yet: a message accepted before another can be listed after
// it, or not be stored at all yet when we list. So the socket resumes this many messages (of any
// channel: the server resumes from an id of any channel) behind the newest listed one; what was
// stored out of order, or late, comes again in the replay, and its duplicates are dropped here.
// This is the one place that knows it; a later issue replaces it with positions.
export const RESUME_MARGIN = 100;

const SEEN_LIMIT = 20_000;  // ids remembered for de-duplication: far more than a page plus a replay

/** The list API refused the token (401) or its capability (403). */
export class RefusedError extends Error {
  constructor(status, body) {
    super(body.message || `refused (${status})`);
    this.status = status;
    this.body = body;
  }
}

export class RelayClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.api       the list API's base URL
   * @param {string} options.ws        the websocket server's URL (ws:// or wss://)
   * @param {string[]} [options.channels]  the channels to follow; none: every channel
   * @param {string|null} [options.token]  an API token or a signed token (sent as ?token= and Bearer)
   * @param {number} [options.pageSize]    messages listed at start (1..1000)
   * @param {number} [options.minDelay]    first reconnect delay in ms, doubling up to maxDelay
   * @param {number} [options.maxDelay]
   */
  constructor({ api, ws, channels = [], token = null, pageSize = 500, minDelay = 500, maxDelay = 5000 }) {
    super();
    this.api = api.replace(/\/$/, "");
    this.ws = ws.replace(/\/$/, "");
    this.channels = [...new Set(channels)].sort();
    this.token = token;
    this.pageSize = pageSize;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.lastId = null;     // the newest id received in stream order: where to resume
    this.retryDelay = minDelay;
    this.socket = null;
    this.closed = false;
    this._seen = new Set();
    this._catchUp = false;  // nothing was listed to resume from: list again once live (see _onReady)
    this._resetsInARow = 0;
    this._started = false;
  }

  /** Backfill, then go live. */
  start() {
    this._begin(false);
  }

  /** Stop for good: close the socket, retry nothing. */
  close() {
    this.closed = true;
    this._closeSocket();
  }

  /** One page of the listing of the selection (one channel or all): {data, has_more, next_cursor}. */
  async history(query = {}) {
    if (this.channels.length > 1) throw new Error("history() pages one channel or all of them");
    const channel = this.channels[0];
    return this._list(channel ? `/channels/${encodeURIComponent(channel)}/messages` : "/messages", query);
  }

  /** The websocket URL with the selection, the resume point and the token. */
  socketUrl() {
    const query = new URLSearchParams();
    for (const channel of this.channels) query.append("channel", channel);
    if (this.lastId) query.set("after", this.lastId);
    if (this.token) query.set("token", this.token);
    return `${this.ws}/?${query}`;
  }

  // ---- History ---------------------------------------------------------------------------------

  async _list(path, query) {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const response = await fetch(`${this.api}${path}?${new URLSearchParams(query)}`, { headers });
    if (response.status === 401 || response.status === 403) {
      throw new RefusedError(response.status, await response.json().catch(() => ({})));
    }
    if (!response.ok) throw new Error(`list API answered ${response.status}`);
    return response.json();
  }

  // The newest page of the selection, newest first (several channels: each one's, merged).
  async _newestPage() {
    if (this.channels.length <= 1) return this.history({ order: "desc", limit: this.pageSize });
    const pages = await Promise.all(this.channels.map((channel) =>
      this._list(`/channels/${encodeURIComponent(channel)}/messages`, { order: "desc", limit: this.pageSize })));
    const data = pages.flatMap((page) => page.data).sort((a, b) => (a.id < b.id ? 1 : -1)).slice(0, this.pageSize);
    return { data, has_more: pages.some((page) => page.has_more), next_cursor: null };
  }

  // The newest messages of every channel ([] when not allowed or not answered): a resume point
  // for a selection must be an id the server's window holds, whatever its channel.
  async _newestOfAll() {
    try { return (await this._list("/messages", { order: "desc", limit: RESUME_MARGIN })).data; } catch { return []; }
  }

  // Where to resume after listing `data` (newest first): see RESUME_MARGIN. Null: nothing listed.
  static resumePoint(everyChannel, data) {
    const behind = (list) => (list && list.length ? list[Math.min(list.length, RESUME_MARGIN) - 1].id : null);
    return behind(everyChannel) || behind(data);
  }

  // List the newest page and hand out what is new. Returns {anchor, newest}, or null if closed meanwhile.
  async _backfill() {
    const [page, everyChannel] = await Promise.all([
      this._newestPage(),
      this.channels.length ? this._newestOfAll() : null,
    ]);
    if (this.closed) return null;
    const messages = page.data.filter((message) => this._remember(message.id)).reverse();
    this._emit("history", { messages, page, first: !this._started });
    this._started = true;
    return { anchor: RelayClient.resumePoint(everyChannel, page.data), newest: page.data.length ? page.data[0].id : null };
  }

  // Backfill a client with nothing to resume from, then connect.
  async _begin(afterDrop) {
    try {
      const listed = await this._backfill();
      if (!listed) return;
      if (listed.anchor) this._setLastId(listed.anchor);
      else this._catchUp = true;
    } catch (error) {
      if (this.closed) return;
      this._emit("error", { error, during: "backfill" });  // live may still be allowed
    }
    if (!this.closed) this._connect(afterDrop);
  }

  // ---- Live ------------------------------------------------------------------------------------

  _connect(afterDrop) {
    this._emit("state", { state: this.lastId ? "catching up" : "connecting", afterDrop });
    const ws = new WebSocket(this.socketUrl());
    this.socket = ws;
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onmessage = (event) => {
      if (this.socket === ws) this._onFrame(ws, JSON.parse(event.data));
    };
    ws.onclose = async (event) => {
      if (this.socket !== ws) return;
      // A refused token is not retried: the same token would be refused again, forever.
      const refusal = event.code === TOKEN_EXPIRED ? { status: 401, body: { error: "token_expired", message: "The token expired." } }
        : opened ? null : await this._handshakeRefusal(ws.url);
      if (this.socket !== ws) return;
      this.socket = null;
      if (refusal) {
        this._emit("refused", refusal);
        this._emit("state", { state: "refused", code: event.code, refusal });
        return;
      }
      const retryIn = this.retryDelay;
      this._emit("state", { state: "disconnected", code: event.code, reason: event.reason, opened, retryIn });
      this.retryDelay = Math.min(this.retryDelay * 2, this.maxDelay);
      setTimeout(() => {
        if (this.closed || this.socket) return;
        // With nothing seen yet there is no id to resume from: what arrived meanwhile is listed.
        if (this.lastId) this._connect(true); else this._begin(true);
      }, retryIn);
    };
  }

  _onFrame(ws, frame) {
    if (frame.type === "ready") { this._onReady(ws); return; }
    if (frame.type === "reset") { this._onReset(frame); return; }
    this._setLastId(frame.id);
    if (this._remember(frame.id)) this._emit("message", { message: frame });
  }

  _onReady(ws) {
    this.retryDelay = this.minDelay;
    this._resetsInARow = 0;
    this._emit("state", { state: "live" });
    // With no id to resume from, the socket only has what is published from now on: list once
    // more, and if something was stored meanwhile resume from it, so what was accepted before
    // this connection but stored late is replayed.
    if (!this._catchUp) return;
    this._catchUp = false;
    this._backfill().then((listed) => {
      if (!listed || !listed.anchor || this.socket !== ws) return;
      this._closeSocket();
      this._setLastId(listed.anchor);
      this._connect(false);
    }, () => {});  // a failure here leaves the client live as it was
  }

  async _onReset(frame) {
    if (frame.reason === "server_fell_behind") {
      // The server itself missed messages (it stalled): this socket goes on from `oldest` with no
      // gap, so keep it and fill in what came before from the list API (duplicates are dropped).
      this._emit("reset", { reason: frame.reason, again: false });
      this._backfill().catch((error) => this._emit("error", { error, during: "backfill" }));
      return;
    }
    // Our position is older than the server's window (routine after a long gap or a Redis
    // restart): refill from the list API, then resume from its newest message (the stream still
    // holds what is not yet persisted). A second reset in a row keeps this socket: it is live next.
    this._resetsInARow += 1;
    this._emit("reset", { reason: frame.reason, again: this._resetsInARow > 1 });
    if (this._resetsInARow > 1) return;
    this._closeSocket();
    try {
      const listed = await this._backfill();
      if (listed && listed.newest) this._setLastId(listed.newest);
    } catch (error) {
      this._emit("error", { error, during: "backfill" });
    }
    if (!this.closed) this._connect(false);
  }

  // Browsers hide why a handshake was refused (the socket just fails): ask the server the same
  // question over plain HTTP, where its 401/403 answer is readable. Null: not refused, retry.
  async _handshakeRefusal(url) {
    try {
      const response = await fetch(url.replace(/^ws/, "http"));
      if (response.status !== 401 && response.status !== 403) return null;
      return { status: response.status, body: await response.json() };
    } catch { return null; }
  }

  _closeSocket() {
    const ws = this.socket;
    if (!ws) return;
    this.socket = null;  // its handlers check this and ignore anything still in flight
    ws.close();
  }

  _setLastId(id) {
    this.lastId = id;
    this._emit("position", { lastId: id });
  }

  // True the first time an id is seen (bounded: the oldest ids are forgotten first).
  _remember(id) {
    if (this._seen.has(id)) return false;
    this._seen.add(id);
    if (this._seen.size > SEEN_LIMIT) this._seen.delete(this._seen.values().next().value);
    return true;
  }

  _emit(type, detail) {
    if (!this.closed) this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
