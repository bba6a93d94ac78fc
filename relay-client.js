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
// How. Every message has a `position`, its place among every channel's messages in accept order,
// the same number in the list API and on the websocket. The client keeps one number, `position`:
// every message of its selection at or below it has been handed out. It lists the newest page of
// history, connects the websocket with ?after= that position (the server replays what came after it,
// then goes live), reconnects after a drop with backoff and ?after= it again, and hands out a
// message only when its position is above it: that one rule drops every duplicate between listing,
// replay and reconnections. On a `reset` frame it lists what it missed from the list API (`after=`
// its position, until `has_more` is false) and goes on.
//
// Events (CustomEvent, the data in `detail`):
//   history  {messages, page, first}  listed messages not handed out before, oldest first; `first`:
//                                     the newest page of the selection (not a refill), and `page` its
//                                     listing (`has_more`: older messages exist, where "load older" goes)
//   message  {message}                a live message not handed out before
//   state    {state, code, reason, opened, retryIn, afterDrop}  state is "connecting", "catching up"
//                                     (resuming from a position), "live", "disconnected" (retrying in
//                                     `retryIn` ms) or "refused" (not retried: see `refusal`)
//   refused  {status, body}           the token was refused (401/403 with the services' JSON body) or
//                                     expired (close code 4401: status 401, body.error "token_expired")
//   reset    {reason, oldest, again}  the server could not resume from our position
//                                     (`unknown_or_expired_id`) or fell behind (`server_fell_behind`);
//                                     what was missed is being listed; `again`: a second one in a row
//   position {position}               where a reconnection resumes: the highest position handed out
//   error    {error, during}          history could not be listed ("backfill"); live goes on

export const TOKEN_EXPIRED = 4401;

const REFILL_PAGE = 1000;        // messages per page when listing what was missed (the list API's maximum)
const UNPLACED_LIMIT = 10_000;  // ids remembered of messages that came without a position (see _handOutLive)

/** The list API refused the token (401) or its capability (403). */
export class RefusedError extends Error {
  constructor(status, body) {
    super(body.message || `refused (${status})`);
    this.status = status;
    this.body = body;
  }
}

const channelPath = (channel) => `/channels/${encodeURIComponent(channel)}/messages`;
const highest = (...positions) => positions.reduce((a, b) => (b === null || (a !== null && a >= b) ? a : b), null);

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
    this.position = null;   // every message of the selection at or below it was handed out; null: none yet
    this.retryDelay = minDelay;
    this.socket = null;
    this.closed = false;
    this._unplaced = new Set();
    this._catchUp = false;  // connected with nothing to resume from: list again once live (see _onReady)
    this._resetsInARow = 0;
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
    return this._list(this._paths()[0], query);
  }

  /** The websocket URL with the selection, the resume point and the token. */
  socketUrl() {
    const query = new URLSearchParams();
    for (const channel of this.channels) query.append("channel", channel);
    if (this.position !== null) query.set("after", this.position);
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

  // The listings of the selection: every channel's, one channel's, or each of several channels'.
  _paths() {
    if (!this.channels.length) return ["/messages"];
    return this.channels.map(channelPath);
  }

  // Every message of a listing after `after`, oldest first: pages until `has_more` is false. The list
  // API stops its pages below the first message not stored yet, so nothing it has not listed is older.
  async _listAfter(path, after) {
    const data = [];
    let page;
    do {
      page = await this._list(path, { after, limit: REFILL_PAGE });
      data.push(...page.data);
      if (page.data.length) after = page.data[page.data.length - 1].position;
    } while (page.has_more && page.data.length && !this.closed);
    return { ...page, data };
  }

  // The newest position of every channel, or null (not allowed, or not answered). Taken before a channel's
  // own listing, which then holds every message of its channel up to it: for a channel whose newest
  // message is old, a resume point the server's window still holds.
  async _newestOfAll() {
    try {
      const page = await this._list("/messages", { order: "desc", limit: 1 });
      return page.data.length ? page.data[0].position : null;
    } catch {
      return null;
    }
  }

  // List the selection: its newest page (after === null) or everything after `after`. Returns
  // {messages (oldest first), upTo, page}: every message of the selection at or below `upTo` is in
  // `messages` or was handed out before (null: nothing is known yet).
  async _fill(after) {
    const anchor = this.channels.length ? await this._newestOfAll() : null;
    const paths = this._paths();
    const pages = await Promise.all(paths.map((path) => (after === null
      ? this._list(path, { order: "desc", limit: this.pageSize }) : this._listAfter(path, after))));
    let messages = pages.flatMap((page) => page.data).sort((a, b) => a.position - b.position);
    if (after === null) messages = messages.slice(-this.pageSize);
    let upTo = highest(after, anchor, messages.length ? messages[messages.length - 1].position : null);
    if (paths.length > 1 && anchor !== null) {
      // Listings made one after the other: past the anchor, a later one may hold a message an earlier
      // one had not yet. What is past it comes from the websocket instead, resuming from the anchor.
      messages = messages.filter((message) => message.position <= anchor);
      upTo = highest(after, anchor);
    }
    const page = paths.length === 1 ? pages[0]
      : { data: [...messages].reverse(), has_more: pages.some((one) => one.has_more), next_cursor: null };
    return { messages, upTo, page };
  }

  // Hand out the listed messages not handed out before, then stand at `upTo`. With `below` (a reset's
  // `oldest`), only those before it: the socket sends the rest.
  _handOutListed({ messages, upTo, page }, first, below = null) {
    const from = this.position;
    const fresh = messages.filter((message) => (from === null || message.position > from)
      && (below === null || message.position < below) && !this._unplaced.has(message.id));
    this._emit("history", { messages: fresh, page, first });
    const to = below === null || upTo === null ? upTo : Math.min(upTo, below - 1);
    if (to !== null && (from === null || to > from)) this._setPosition(to);
  }

  // Backfill a client with nothing to resume from, then connect.
  async _begin(afterDrop) {
    try {
      const fill = await this._fill(null);
      if (this.closed) return;
      this._handOutListed(fill, true);
    } catch (error) {
      if (this.closed) return;
      this._emit("error", { error, during: "backfill" });  // live may still be allowed
    }
    this._catchUp = this.position === null;
    if (!this.closed) this._connect(afterDrop);
  }

  // ---- Live ------------------------------------------------------------------------------------

  _connect(afterDrop) {
    this._emit("state", { state: this.position !== null ? "catching up" : "connecting", afterDrop });
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
        // With nothing handed out yet there is no position to resume from: what arrived meanwhile is listed.
        if (this.position !== null) this._connect(true); else this._begin(true);
      }, retryIn);
    };
  }

  _onFrame(ws, frame) {
    if (ws.held) { ws.held.push(frame); return; }  // listing meanwhile: in order, afterwards
    if (frame.type === "ready") this._onReady(ws);
    else if (frame.type === "reset") this._onReset(ws, frame);
    else this._handOutLive(frame);
  }

  _handOutLive(message) {
    if (typeof message.position !== "number") {
      // A frame of the previous release (a rolling upgrade): no position, so known by its id.
      if (this._firstUnplaced(message.id)) this._emit("message", { message });
      return;
    }
    if (this.position !== null && message.position <= this.position) return;  // listed or replayed before
    this._setPosition(message.position);
    this._emit("message", { message });
  }

  // Keep the socket but hold what it sends while `work` lists, then go on with what it sent, in order.
  async _holding(ws, work) {
    ws.held = [];
    try {
      await work();
    } catch (error) {
      if (!this.closed) this._emit("error", { error, during: "backfill" });
    }
    const held = ws.held;
    ws.held = null;
    for (const frame of held) {
      if (this.socket !== ws) return;  // closed meanwhile: the next socket resumes from our position
      this._onFrame(ws, frame);  // a frame that starts another hold sends the rest into it
    }
  }

  _onReady(ws) {
    this.retryDelay = this.minDelay;
    this._resetsInARow = 0;
    this._emit("state", { state: "live" });
    if (!this._catchUp) return;
    this._catchUp = false;
    // With no position to resume from, the socket only has what is published from now on: list once
    // more, and if something was stored meanwhile resume from it instead, so what was accepted before
    // this connection but stored late is replayed (this socket's frames meanwhile come again there).
    this._holding(ws, async () => {
      const fill = await this._fill(null);
      if (this.socket !== ws) return;
      this._handOutListed(fill, true);
      if (this.position === null) return;  // still nothing listed: this socket goes on
      this._closeSocket();
      this._connect(false);
    });
  }

  _onReset(ws, frame) {
    const expired = frame.reason !== "server_fell_behind";
    if (expired) this._resetsInARow += 1;
    const again = this._resetsInARow > 1;
    this._emit("reset", { reason: frame.reason, oldest: frame.oldest ?? null, again });
    if (expired && !again) {
      // Our position is older than the server's window (routine after a long gap or a Redis restart):
      // list what came after it, then reconnect from where the listing ends, which the window holds.
      // Going on with this socket instead would lose what was accepted before it joined but not stored
      // yet when we list: that is neither in the listing nor sent on this socket.
      this._closeSocket();
      this._refill().then(() => { if (!this.closed) this._connect(false); });
      return;
    }
    // The server fell behind: this socket goes on with no gap from `oldest`, so list what came before it.
    // Or a second reset in a row: this socket is live next anyway. Either way keep it, and list.
    const below = expired ? null : frame.oldest ?? null;
    this._holding(ws, async () => {
      const fill = await this._fill(this.position);
      if (this.socket === ws) this._handOutListed(fill, false, below);
    });
  }

  async _refill() {
    try {
      this._handOutListed(await this._fill(this.position), false);
    } catch (error) {
      if (!this.closed) this._emit("error", { error, during: "backfill" });
    }
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

  _setPosition(position) {
    this.position = position;
    this._emit("position", { position });
  }

  // True the first time an id comes without a position (bounded: the oldest ids are forgotten first).
  _firstUnplaced(id) {
    if (this._unplaced.has(id)) return false;
    this._unplaced.add(id);
    if (this._unplaced.size > UNPLACED_LIMIT) this._unplaced.delete(this._unplaced.values().next().value);
    return true;
  }

  _emit(type, detail) {
    if (!this.closed) this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
