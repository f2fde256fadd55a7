// TradingView's UDF over HTTP (docs/GATEWAY.md section 8), for the datafeed and the page.
//
// `history()` is one request; `barsBack()` is what a chart needs: at least `countBack` bars
// ending before `to`, walking further back over gaps (`no_data` with `nextTime`) until it has
// them or the history starts (`no_data` without `nextTime`: `noData` true, stop asking).
// Times are the gateway's epoch seconds here; the datafeed turns them into milliseconds.

export class UdfError extends Error {
  constructor(path, message, status = null) {
    super(`${path}: ${message}`);
    this.name = 'UdfError';
    this.path = path;
    this.status = status;
  }
}

/** Bars of a `{"s": "ok", "t": [...], "o", "h", "l", "c", "v"}` answer, oldest first. */
export function udfToBars(json) {
  const t = json.t ?? [];
  const bars = [];
  for (let i = 0; i < t.length; i += 1) {
    bars.push({
      time: t[i],
      open: json.o[i],
      high: json.h[i],
      low: json.l[i],
      close: json.c[i],
      volume: json.v ? json.v[i] : 0,
    });
  }
  return bars.sort((a, b) => a.time - b.time);
}

// A walk over gaps stops after this many requests: a server that keeps answering nextTime
// without bars must not make one getBars call loop for ever.
const MAX_WALK = 20;

export class UdfClient {
  /** `baseUrl`: the gateway's URL ('' for the page's own origin), or a function giving it at
   * each request (the gateway a Connection is on: UDF answers any origin, so history keeps
   * loading after a failover); `fetch` as the browser's. */
  constructor({ baseUrl = '', fetch = globalThis.fetch } = {}) {
    if (typeof fetch !== 'function') throw new TypeError('UdfClient needs a fetch function');
    this._base = typeof baseUrl === 'function' ? baseUrl : () => baseUrl;
    this._fetch = (...args) => fetch(...args); // a bare window.fetch called as a method throws "Illegal invocation"
  }

  async _get(path, params = {}, as = 'json') {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) query.set(k, String(v));
    const qs = query.toString();
    const url = `${(this._base() ?? '').replace(/\/+$/, '')}/udf/${path}${qs ? `?${qs}` : ''}`;
    let response;
    try {
      response = await this._fetch(url, { headers: { accept: 'application/json' } });
    } catch (err) {
      throw new UdfError(path, `unreachable (${err.message ?? err})`);
    }
    if (!response.ok) throw new UdfError(path, `HTTP ${response.status}`, response.status);
    return as === 'text' ? response.text() : response.json();
  }

  config() {
    return this._get('config');
  }

  /** The symbol's LibrarySymbolInfo as the gateway has it; unknown → UdfError. */
  async symbol(name) {
    const info = await this._get('symbols', { symbol: name });
    if (info.s === 'error') throw new UdfError('symbols', info.errmsg ?? 'unknown symbol');
    return info;
  }

  search(query, { type = '', exchange = '', limit = 30 } = {}) {
    return this._get('search', { query, type, exchange, limit });
  }

  /** The gateway's time, epoch seconds. */
  async time() {
    const text = await this._get('time', {}, 'text');
    const seconds = Number(String(text).trim());
    if (!Number.isFinite(seconds)) throw new UdfError('time', `not a number: ${text}`);
    return seconds;
  }

  /** One /udf/history request: `{bars}` or `{bars: [], noData: true, nextTime}`. */
  async history({ symbol, resolution, from, to, countback }) {
    const json = await this._get('history', { symbol, resolution, from, to, countback });
    if (json.s === 'ok') return { bars: udfToBars(json), noData: false, nextTime: null };
    if (json.s === 'no_data') return { bars: [], noData: true, nextTime: json.nextTime ?? null };
    throw new UdfError('history', json.errmsg ?? `status ${json.s}`);
  }

  /**
   * At least `countBack` bars (when the history has them) with time < `to`, oldest first.
   * `noData` is true when the history has nothing older than the first bar returned.
   */
  async barsBack({ symbol, resolution, to, countBack, from = 0 }) {
    const byTime = new Map();
    // A server that honours from/to rather than countback gets the same width of time per
    // request, moved back with each step.
    const span = Math.max(1, to - from);
    let before = to;
    for (let request = 0; request < MAX_WALK; request += 1) {
      const wanted = countBack - byTime.size;
      const page = await this.history({ symbol, resolution, from: Math.max(0, before - span), to: before, countback: wanted });
      for (const bar of page.bars) if (bar.time < to) byTime.set(bar.time, bar);
      if (page.noData && page.nextTime === null) return { bars: sorted(byTime), noData: true };
      if (byTime.size >= countBack) return { bars: sorted(byTime), noData: false };
      // Fewer than asked: the rest is older than what came, or before a gap (at nextTime).
      const next = page.noData ? page.nextTime + 1 : (page.bars.length ? page.bars[0].time : null);
      if (next === null || next >= before) return { bars: sorted(byTime), noData: byTime.size === 0 };
      before = next;
    }
    return { bars: sorted(byTime), noData: false };
  }
}

function sorted(byTime) {
  return [...byTime.values()].sort((a, b) => a.time - b.time);
}
