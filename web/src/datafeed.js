// TradingView Charting Library datafeed (IExternalDatafeed + IDatafeedChartApi) over the
// gateway: UDF for history and symbols, the `bars:{SYMBOL}:{RES}` stream for live bars.
//
// What the library expects, and where it is kept here (/work/shared/REFERENCES.md section 5):
// - every callback is called asynchronously (`defer`), never inside the call that asked;
// - bar times are UTC milliseconds (the gateway's are seconds: `toTvBar`);
// - every bar handed over is a fresh copy (the library mutates what it gets);
// - getBars returns at least `countBack` bars unless the history starts: `noData` then, or the
//   library asks for ever (UdfClient.barsBack walks gaps);
// - subscribeBars gets complete current bars, never one older than the last it got (routed by
//   `listenerGuid`: after a resolution switch the old listener lives on until unsubscribeBars);
// - onResetCacheNeededCallback only when data the chart holds really changed: a reset from the
//   gateway whose snapshot merely extends what we had is delivered as updates instead.

import { BarSeries } from './bars.js';
import { UdfClient } from './udf.js';

export const RESOLUTIONS = Object.freeze(['1S', '1', '5', '15', '60', '1D']);
// Bars a getBars call returns when the library gives no countBack (versions before it had one).
const DEFAULT_COUNT_BACK = 300;

const defer = (fn) => setTimeout(fn, 0);

/** A gateway bar (time in seconds) as the Charting Library's Bar (time in ms), a new object. */
export function toTvBar(bar) {
  return {
    time: bar.time * 1000,
    open: bar.open,
    high: bar.high,
    low: bar.low,
    close: bar.close,
    volume: bar.volume ?? 0,
  };
}

/** The stream of `symbol` at `resolution`. */
export function barsStream(symbol, resolution) {
  return `bars:${symbol}:${resolution}`;
}

/** A complete LibrarySymbolInfo from what /udf/symbols gave (ours win where it must be so). */
export function symbolInfoOf(udf, resolutions = RESOLUTIONS) {
  const name = udf.name ?? udf.symbol ?? udf.ticker;
  const supported = udf.supported_resolutions ?? [...resolutions];
  return {
    name,
    ticker: udf.ticker ?? name,
    full_name: udf.full_name ?? name,
    description: udf.description ?? name,
    type: udf.type ?? 'forex',
    session: '24x7',
    exchange: udf.exchange ?? 'tickmesh',
    listed_exchange: udf.listed_exchange ?? udf.exchange ?? 'tickmesh',
    timezone: 'Etc/UTC',
    format: 'price',
    pricescale: udf.pricescale ?? 100000,
    minmov: udf.minmov ?? 1,
    has_intraday: true,
    has_seconds: udf.has_seconds ?? supported.some((r) => r.endsWith('S')),
    seconds_multipliers: udf.seconds_multipliers ?? ['1'],
    has_daily: udf.has_daily ?? true,
    intraday_multipliers: udf.intraday_multipliers ?? ['1', '5', '15', '60'],
    daily_multipliers: udf.daily_multipliers ?? ['1'],
    supported_resolutions: supported,
    volume_precision: udf.volume_precision ?? 2,
    data_status: 'streaming',
  };
}

/**
 * The datafeed. `connection`: a Connection (web/src/connection.js); `baseUrl`: the gateway
 * whose /udf/* answers history ('' for the page's own origin); `fetch` for node.
 */
export function createDatafeed(connection, { baseUrl = '', fetch = globalThis.fetch, udf = null } = {}) {
  const http = udf ?? new UdfClient({ baseUrl, fetch });
  const streams = new Map(); // stream -> {series, listeners: Set(guid), unsubscribe}
  const listeners = new Map(); // guid -> {stream, onTick, onReset, lastTime}
  let config = null;

  function send(listener, bar) {
    if (listener.lastTime !== null && bar.time < listener.lastTime) return; // never older
    listener.lastTime = bar.time;
    const tvBar = toTvBar(bar);
    defer(() => {
      if (listeners.get(listener.guid) === listener) listener.onTick(tvBar);
    });
  }

  function onItem(name, item) {
    const s = streams.get(name);
    if (!s) return;
    if (item.kind === 'reset') {
      s.resetPending = true;
      return;
    }
    if (item.kind === 'snapshot') {
      const incoming = item.bars ?? [];
      const changed = s.resetPending && !s.series.continues(incoming);
      const lastBefore = s.series.last();
      s.resetPending = false;
      s.series.snapshot(incoming);
      // The chart has its history from getBars: of a first snapshot it needs the current bar
      // only; after one it had, the bars from its last one on.
      const fresh = lastBefore === null ? [s.series.last()].filter(Boolean)
        : s.series.all().filter((b) => b.time >= lastBefore.time);
      for (const guid of s.listeners) {
        const listener = listeners.get(guid);
        if (changed) {
          listener.lastTime = null;
          defer(() => {
            if (listeners.get(guid) === listener) listener.onReset();
          });
        } else {
          for (const bar of fresh) send(listener, bar);
        }
      }
      return;
    }
    if (item.kind !== 'bar') return;
    const result = s.series.apply(item);
    if (result.action === 'ignored') return;
    for (const guid of s.listeners) send(listeners.get(guid), result.bar);
  }

  return {
    onReady(callback) {
      const answer = (cfg) => defer(() => callback({ ...cfg }));
      if (config) {
        answer(config);
        return;
      }
      http.config().then((cfg) => {
        config = {
          supported_resolutions: cfg.supported_resolutions ?? [...RESOLUTIONS],
          supports_search: cfg.supports_search ?? true,
          supports_group_request: false,
          supports_marks: false,
          supports_timescale_marks: false,
          supports_time: cfg.supports_time ?? true,
          exchanges: cfg.exchanges ?? [],
          symbols_types: cfg.symbols_types ?? [],
        };
        answer(config);
      }, () => {
        config = { supported_resolutions: [...RESOLUTIONS], supports_search: true,
          supports_group_request: false, supports_marks: false, supports_timescale_marks: false,
          supports_time: true, exchanges: [], symbols_types: [] };
        answer(config);
      });
    },

    searchSymbols(userInput, exchange, symbolType, onResult) {
      http.search(userInput, { type: symbolType, exchange }).then(
        (items) => defer(() => onResult((Array.isArray(items) ? items : []).map((i) => ({
          symbol: i.symbol, full_name: i.full_name ?? i.symbol, description: i.description ?? '',
          exchange: i.exchange ?? 'tickmesh', ticker: i.ticker ?? i.symbol, type: i.type ?? 'forex',
        })))),
        () => defer(() => onResult([])),
      );
    },

    resolveSymbol(symbolName, onResolve, onError) {
      http.symbol(symbolName).then(
        (info) => {
          const resolved = symbolInfoOf(info, config?.supported_resolutions);
          defer(() => onResolve(resolved));
        },
        (err) => defer(() => onError(err.message.includes('unknown') ? 'unknown_symbol' : err.message)),
      );
    },

    getBars(symbolInfo, resolution, periodParams, onResult, onError) {
      // firstDataRequest needs nothing of its own: `to` is the chart's now, and the forming bar
      // (the last of /udf/history) is in range; countBack wins over `from` at the gateway.
      const { from, to, countBack } = periodParams;
      const symbol = symbolInfo.ticker ?? symbolInfo.name;
      http.barsBack({ symbol, resolution, from, to, countBack: Math.max(1, countBack ?? DEFAULT_COUNT_BACK) }).then(
        ({ bars, noData }) => {
          const tvBars = bars.map(toTvBar);
          defer(() => onResult(tvBars, { noData }));
        },
        (err) => defer(() => onError(err.message)),
      );
    },

    subscribeBars(symbolInfo, resolution, onTick, listenerGuid, onResetCacheNeededCallback) {
      const symbol = symbolInfo.ticker ?? symbolInfo.name;
      const name = barsStream(symbol, resolution);
      if (listeners.has(listenerGuid)) this.unsubscribeBars(listenerGuid);
      let s = streams.get(name);
      if (!s) {
        s = { series: new BarSeries(), listeners: new Set(), resetPending: false, unsubscribe: null };
        streams.set(name, s);
        s.unsubscribe = connection.subscribe(name, (item) => onItem(name, item));
      }
      const listener = {
        guid: listenerGuid, stream: name, onTick,
        onReset: onResetCacheNeededCallback ?? (() => {}), lastTime: null,
      };
      listeners.set(listenerGuid, listener);
      s.listeners.add(listenerGuid);
      const last = s.series.last();
      if (last) send(listener, last); // the stream is live already: the current bar now
    },

    unsubscribeBars(listenerGuid) {
      const listener = listeners.get(listenerGuid);
      if (!listener) return;
      listeners.delete(listenerGuid);
      const s = streams.get(listener.stream);
      if (!s) return;
      s.listeners.delete(listenerGuid);
      if (s.listeners.size === 0) {
        streams.delete(listener.stream);
        s.unsubscribe();
      }
    },

    getServerTime(callback) {
      http.time().then((seconds) => defer(() => callback(seconds)), () => {});
    },

    /** Not the library's: what the tests and the status strip read. */
    stats() {
      let ignored = 0;
      for (const s of streams.values()) ignored += s.series.ignored;
      return { streams: streams.size, listeners: listeners.size, ignored };
    },
  };
}
