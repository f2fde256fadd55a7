// The chart page: a Lightweight Charts v5 candlestick chart over the gateway's bars streams,
// the local trading panel over the orders stream, the mesh status strip, a login form.
//
// Stable hooks for tests (ids; each also carries the same data-testid):
//   symbol (select), resolutions > button[data-res="1S"|"1"|"5"|"15"|"60"|"1D"] (res-{RES}),
//   bid, ask, conn-state (data-status = connecting|live|reconnecting|offline; text names the
//   gateway), user, logout, chart, chart-title, ohlc, history-state,
//   side-buy, side-sell, type-market, type-limit, qty, price, account, place,
//   open-orders > tr.order[data-cid] (order-row) with button.cancel (cancel-{cid}) and
//   button.replace (replace-{cid}); the replace form: replace-qty, replace-price, replace-ok,
//   open-count, queued > tr[data-cid] (queued-row), queued-count, positions > tr[data-symbol]
//   (position-row), fills > tr[data-exec] (fill-row), fill-count, done-orders > tr[data-cid],
//   toasts, st-backend, st-rate, st-gaps, st-history, st-gateway, st-reconnects, st-dups,
//   st-resets, st-outage, st-rtt, login, login-form, login-user, login-password, login-key,
//   login-submit, login-error.
// URL parameters: `gateways=URL,URL` pins the gateways failed over between; `lwc=dev` loads the development build of Lightweight Charts (it asserts
// ordering: tests use it), `symbol`, `res`.
// window.tickmesh exposes the page's state for tests: connection, book, bars(), checks
// (bar updates applied, ignored, setData calls, order violations seen), counters() and
// lastPlaced() (the client order id of the ticket's last order).

import { Connection, AuthError, Status } from './src/connection.js';
import { BarSeries } from './src/bars.js';
import { OrderBook } from './src/orders.js';
import { UdfClient } from './src/udf.js';
import { RESOLUTIONS, barsStream } from './src/datafeed.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 300; // bars fetched per scroll to the left edge
const RES_SECONDS = { '1S': 1, 1: 60, 5: 300, 15: 900, 60: 3600, '1D': 86400 };
const COLORS = {
  bg: '#0b0e13', text: '#8b94a7', grid: '#161b24', border: '#222a36',
  up: '#26a69a', down: '#ef5350', upVol: 'rgba(38,166,154,0.35)', downVol: 'rgba(239,83,80,0.35)',
};

// `?gateways=URL,URL` pins the page to those gateways (no others learnt from /api/gateways).
const pinned = (params.get('gateways') ?? '').split(',').map((u) => u.trim()).filter(Boolean);
const connection = new Connection({ urls: pinned.length ? pinned : [location.origin], client: `tickmesh-web ${navigator.userAgent.slice(0, 40)}` });
const book = new OrderBook(connection);
const udf = new UdfClient({ baseUrl: () => connection.url ?? '' });  // follows a failover

const state = {
  symbol: params.get('symbol') || null,
  resolution: RESOLUTIONS.includes(params.get('res')) ? params.get('res') : '1',
  side: 'buy',
  type: 'market',
  symbols: [],
  precision: 5,
  unsubscribeBars: null,
  unsubscribeTicks: null,
  series: new BarSeries({ maxBars: 20_000 }),
  loadingHistory: false,
  historyDone: false,
  lastQuote: null,
  replacing: null, // client order id whose replace form is open
};

const checks = { updates: 0, setData: 0, ignored: 0, violations: 0, lastTime: null };

// ---- the chart ------------------------------------------------------------------------------

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const el = document.createElement('script');
    el.src = src;
    el.onload = resolve;
    el.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.appendChild(el);
  });
}

let chart = null;
let candles = null;
let volume = null;

async function createChart() {
  const build = params.get('lwc') === 'dev' ? 'development' : 'production';
  await loadScript(`/web/vendor/lightweight-charts.standalone.${build}.js`);
  const LWC = window.LightweightCharts;
  chart = LWC.createChart($('chart'), {
    autoSize: true,
    layout: { background: { type: 'solid', color: COLORS.bg }, textColor: COLORS.text, fontFamily: 'ui-monospace, "JetBrains Mono", Menlo, Consolas, monospace', fontSize: 11 },
    grid: { vertLines: { color: COLORS.grid }, horzLines: { color: COLORS.grid } },
    rightPriceScale: { borderColor: COLORS.border },
    timeScale: { borderColor: COLORS.border, timeVisible: true, secondsVisible: false, rightOffset: 6 },
    crosshair: { mode: LWC.CrosshairMode.Normal },
    // attributionLogo stays at its default (shown): Lightweight Charts' licence asks for it.
  });
  candles = chart.addSeries(LWC.CandlestickSeries, {
    upColor: COLORS.up, downColor: COLORS.down, borderVisible: false,
    wickUpColor: COLORS.up, wickDownColor: COLORS.down,
  });
  volume = chart.addSeries(LWC.HistogramSeries, { priceFormat: { type: 'volume' }, priceScaleId: 'vol', lastValueVisible: false, priceLineVisible: false });
  chart.priceScale('vol').applyOptions({ scaleMargins: { top: 0.82, bottom: 0 } });
  candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.22 } });
  chart.timeScale().subscribeVisibleLogicalRangeChange((range) => {
    if (range && range.from < 10) loadOlder();
  });
  chart.subscribeCrosshairMove((p) => showOhlc(p && p.time !== undefined ? p.seriesData.get(candles) : null));
}

const toCandle = (b) => ({ time: b.time, open: b.open, high: b.high, low: b.low, close: b.close });
const toVolume = (b) => ({ time: b.time, value: b.volume ?? 0, color: b.close >= b.open ? COLORS.upVol : COLORS.downVol });

function drawAll() {
  const bars = state.series.all();
  candles.setData(bars.map(toCandle));
  volume.setData(bars.map(toVolume));
  checks.setData += 1;
  checks.lastTime = bars.length ? bars[bars.length - 1].time : null;
  showOhlc(null);
}

function drawOne(bar) {
  if (checks.lastTime !== null && bar.time < checks.lastTime) {
    checks.violations += 1; // BarSeries never lets this happen; counted so a test can prove it
    return;
  }
  candles.update(toCandle(bar));
  volume.update(toVolume(bar));
  checks.updates += 1;
  checks.lastTime = bar.time;
}

function showOhlc(bar) {
  const b = bar ?? state.series.last();
  if (!b) {
    $('ohlc').textContent = '';
    return;
  }
  const f = (x) => fmt(x);
  const up = b.close >= b.open;
  $('ohlc').innerHTML = `O <b>${f(b.open)}</b> H <b>${f(b.high)}</b> L <b>${f(b.low)}</b> C <b class="${up ? 'up' : 'down'}">${f(b.close)}</b>`;
}

function onBarItem(item) {
  if (item.kind === 'reset') return; // the snapshot that follows replaces everything
  const result = state.series.apply(item);
  if (result.action === 'snapshot') {
    state.historyDone = false;
    drawAll();
  } else if (result.action === 'ignored') {
    checks.ignored += 1;
  } else {
    drawOne(result.bar);
    if (!chartHasCrosshair) showOhlc(null);
  }
}
let chartHasCrosshair = false;

async function loadOlder() {
  if (state.loadingHistory || state.historyDone || state.series.length === 0) return;
  state.loadingHistory = true;
  const stream = barsStream(state.symbol, state.resolution);
  $('history-state').textContent = 'loading history…';
  try {
    const { bars, noData } = await udf.barsBack({
      symbol: state.symbol, resolution: state.resolution, to: state.series.firstTime(), countBack: HISTORY_PAGE,
    });
    if (barsStream(state.symbol, state.resolution) !== stream) return; // switched meanwhile
    const range = chart.timeScale().getVisibleLogicalRange();
    const added = state.series.prepend(bars);
    if (added > 0) {
      drawAll();
      if (range) chart.timeScale().setVisibleLogicalRange({ from: range.from + added, to: range.to + added });
    }
    state.historyDone = noData || added === 0;
    $('history-state').textContent = state.historyDone ? 'start of history' : '';
  } catch (err) {
    $('history-state').textContent = `history: ${err.message}`;
  } finally {
    state.loadingHistory = false;
  }
}

function watch(symbol, resolution) {
  state.unsubscribeBars?.();
  state.unsubscribeTicks?.();
  state.symbol = symbol;
  state.resolution = resolution;
  state.series = new BarSeries({ maxBars: 20_000 });
  state.historyDone = false;
  checks.lastTime = null;
  candles.setData([]);
  volume.setData([]);
  chart.applyOptions({ timeScale: { secondsVisible: resolution === '1S', timeVisible: resolution !== '1D' } });
  const info = state.symbols.find((s) => s.symbol === symbol);
  state.precision = info?.precision ?? 5;
  candles.applyOptions({ priceFormat: { type: 'price', precision: state.precision, minMove: 10 ** -state.precision } });
  $('chart-title').textContent = `${symbol} · ${resolution === '1D' ? '1D' : resolution === '1S' ? '1s' : `${resolution}m`}`;
  for (const b of document.querySelectorAll('#resolutions button')) b.classList.toggle('active', b.dataset.res === resolution);
  $('symbol').value = symbol;
  state.unsubscribeBars = connection.subscribe(barsStream(symbol, resolution), onBarItem);
  state.unsubscribeTicks = connection.subscribe(`ticks:${symbol}`, onTick);
  const url = new URL(location.href);
  url.searchParams.set('symbol', symbol);
  url.searchParams.set('res', resolution);
  history.replaceState(null, '', url);
  renderTicket();
}

function onTick(item) {
  if (item.kind !== 'tick' && item.kind !== 'snapshot') return;
  const tick = item.kind === 'snapshot' ? (item.tick ?? item) : item;
  if (tick.bid === undefined) return;
  const prev = state.lastQuote;
  state.lastQuote = tick;
  const dir = prev ? Math.sign(tick.bid - prev.bid) : 0;
  $('bid').textContent = fmt(tick.bid);
  $('ask').textContent = fmt(tick.ask);
  $('spread').textContent = ((tick.ask - tick.bid) * 10 ** (state.precision - 1)).toFixed(1);
  $('quote').dataset.dir = dir > 0 ? 'up' : dir < 0 ? 'down' : $('quote').dataset.dir ?? '';
  if (state.type === 'market') renderTicket();
}

// ---- formatting -----------------------------------------------------------------------------

function fmt(x, precision = state.precision) {
  return typeof x === 'number' && Number.isFinite(x) ? x.toFixed(precision) : '—';
}
const signClass = (x) => (Math.abs(x) < 10 ** -state.precision / 2 ? 'muted' : x > 0 ? 'up' : 'down');
// PnL in price units × quantity: an FX pip on one unit needs the price's own precision.
const money = (x) => (Math.abs(x) < 10 ** -state.precision / 2 ? 0 : x).toFixed(state.precision);
const qtyFmt = (x) => (typeof x === 'number' ? String(+x.toFixed(6)) : '—');
const timeFmt = (ms) => (ms ? new Date(ms).toISOString().slice(11, 23) : '—');
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-') || k === 'id' || k === 'type' || k === 'step' || k === 'value' || k === 'title') node.setAttribute(k, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const sideCell = (side) => el('td', { class: side === 'buy' ? 'up' : 'down' }, side === 'buy' ? 'BUY' : 'SELL');

// ---- the trading panel ----------------------------------------------------------------------

function renderTicket() {
  $('side-buy').classList.toggle('active', state.side === 'buy');
  $('side-sell').classList.toggle('active', state.side === 'sell');
  $('type-market').classList.toggle('active', state.type === 'market');
  $('type-limit').classList.toggle('active', state.type === 'limit');
  $('price').disabled = state.type !== 'limit';
  const qty = Number($('qty').value) || 0;
  const where = state.type === 'limit' ? `@ ${$('price').value || '—'}` : '@ market';
  const place = $('place');
  place.textContent = `${state.side === 'buy' ? 'Buy' : 'Sell'} ${qtyFmt(qty)} ${state.symbol ?? ''} ${where}`;
  place.className = `place ${state.side}`;
}

function placeFromTicket() {
  const quantity = Number($('qty').value);
  if (!(quantity > 0)) {
    toast('Quantity must be above 0', 'bad');
    return;
  }
  const order = { symbol: state.symbol, side: state.side, type: state.type, quantity, account: $('account').value || undefined };
  if (state.type === 'limit') {
    order.price = Number($('price').value);
    if (!(order.price > 0)) {
      toast('A limit order needs a price', 'bad');
      return;
    }
  }
  let id;
  try {
    id = connection.place(order);
  } catch (err) {
    toast(err.message, 'bad');
    return;
  }
  state.lastPlaced = id;
  toast(`${order.side.toUpperCase()} ${qtyFmt(quantity)} ${order.symbol} ${order.type === 'limit' ? `@ ${order.price}` : 'MKT'} · ${connection.status === Status.LIVE ? 'sent' : 'queued'}`, 'info', id);
}

let renderPending = false;
function renderOrders() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    drawOrders();
  });
}

function drawOrders() {
  const working = book.workingOrders().reverse();
  $('open-count').textContent = working.length;
  $('open-orders').replaceChildren(...working.map(orderRow));
  if (working.length === 0) $('open-orders').append(emptyRow(6, 'no open orders'));

  const queue = connection.queue();
  $('queued-count').textContent = queue.length;
  $('queued').replaceChildren(...queue.map((r) => el('tr', { 'data-cid': r.client_order_id, 'data-testid': 'queued-row', 'data-state': r.state, class: 'queued' },
    el('td', {}, r.op), el('td', {}, describeRequest(r)), el('td', { class: `state ${r.state}` }, r.state + (r.reason ? ` (${r.reason})` : '')))));
  if (queue.length === 0) $('queued').append(emptyRow(3, 'nothing waiting'));

  const positions = book.allPositions().filter((p) => p.quantity !== 0 || p.realized_pnl !== 0);
  $('positions').replaceChildren(...positions.map((p) => el('tr', { 'data-symbol': p.symbol, 'data-account': p.account, 'data-testid': 'position-row' },
    el('td', {}, p.symbol), el('td', { class: signClass(p.quantity) }, qtyFmt(p.quantity)),
    el('td', {}, fmt(p.avg_price)), el('td', { class: signClass(p.realized_pnl) }, money(p.realized_pnl)))));
  if (positions.length === 0) $('positions').append(emptyRow(4, 'flat'));

  const fills = book.fillsOf().reverse();
  $('fill-count').textContent = fills.length;
  $('fills').replaceChildren(...fills.slice(0, 50).map((f) => el('tr', { 'data-exec': f.exec_id, 'data-cid': f.client_order_id, 'data-testid': 'fill-row' },
    el('td', {}, timeFmt(f.time_ms)), el('td', {}, f.symbol ?? ''), sideCell(f.side), el('td', {}, qtyFmt(f.quantity)), el('td', {}, fmt(f.price)))));
  if (fills.length === 0) $('fills').append(emptyRow(5, 'no fills yet'));

  const done = book.allOrders().filter((o) => !working.some((w) => w.client_order_id === o.client_order_id)).reverse();
  $('done-orders').replaceChildren(...done.slice(0, 30).map((o) => el('tr', { 'data-cid': o.client_order_id, 'data-state': o.state, 'data-testid': 'done-row' },
    el('td', {}, o.symbol), sideCell(o.side), el('td', {}, qtyFmt(o.quantity)), el('td', {}, o.avg_price ? fmt(o.avg_price) : '—'),
    el('td', { class: `state ${o.state}` }, o.state))));
  if (done.length === 0) $('done-orders').append(emptyRow(5, '—'));
}

function emptyRow(span, text) {
  return el('tr', { class: 'empty' }, el('td', { colSpan: span }, text));
}

function describeRequest(r) {
  if (r.op === 'place') {
    const o = r.order;
    return `${o.side.toUpperCase()} ${qtyFmt(o.quantity)} ${o.symbol} ${o.type === 'limit' ? `@ ${o.price}` : 'MKT'}`;
  }
  if (r.op === 'replace') return `${r.target} → ${qtyFmt(r.quantity)} @ ${r.price}`;
  return r.target;
}

function orderRow(o) {
  const cid = o.client_order_id;
  const row = el('tr', { class: 'order', 'data-cid': cid, 'data-state': o.state, 'data-testid': 'order-row' },
    el('td', { class: o.side === 'buy' ? 'up' : 'down' }, `${o.side === 'buy' ? 'BUY' : 'SELL'} ${o.symbol}`),
    el('td', {}, qtyFmt(o.quantity)), el('td', {}, qtyFmt(o.filled_quantity ?? 0)),
    el('td', {}, o.type === 'limit' ? fmt(o.price) : 'MKT'), el('td', { class: `state ${o.state}` }, o.state.replace('PARTIALLY_', 'PART ')),
    el('td', { class: 'actions' },
      o.type === 'limit' ? el('button', { class: 'ghost replace', 'data-testid': `replace-${cid}`, type: 'button', onclick: () => openReplace(cid) }, '✎') : '',
      el('button', { class: 'ghost cancel', 'data-testid': `cancel-${cid}`, type: 'button', title: 'Cancel',
        onclick: () => request(() => connection.cancel(cid, { account: o.account }), `Cancel ${o.symbol} ${qtyFmt(o.quantity)}`) }, '✕')));
  if (state.replacing !== cid) return row;
  const form = el('tr', { class: 'replace-form' }, el('td', { colSpan: 6 },
    el('input', { id: 'replace-qty', 'data-testid': 'replace-qty', type: 'number', step: 'any', value: o.quantity }),
    el('input', { id: 'replace-price', 'data-testid': 'replace-price', type: 'number', step: 'any', value: o.price }),
    el('button', { id: 'replace-ok', 'data-testid': 'replace-ok', class: 'buy', type: 'button', onclick: () => {
      const quantity = Number($('replace-qty').value);
      const price = Number($('replace-price').value);
      state.replacing = null;
      request(() => connection.replace(cid, { quantity, price, account: o.account }), `Replace → ${qtyFmt(quantity)} @ ${price}`);
      drawOrders();
    } }, 'Replace'),
    el('button', { class: 'ghost', type: 'button', onclick: () => { state.replacing = null; drawOrders(); } }, 'Cancel')));
  const frag = document.createDocumentFragment();
  frag.append(row, form);
  return frag;
}

/** Queue a cancel or replace; a full queue (QueueFull) is said, not thrown. */
function request(send, text) {
  try {
    send();
    toast(text, 'info');
  } catch (err) {
    toast(err.message, 'bad');
  }
}

function openReplace(cid) {
  state.replacing = state.replacing === cid ? null : cid;
  drawOrders();
}

function toast(text, kind = 'info', key = null) {
  const node = el('div', { class: `toast ${kind}`, 'data-key': key ?? undefined }, text);
  $('toasts').prepend(node);
  while ($('toasts').children.length > 4) $('toasts').lastChild.remove();
  setTimeout(() => node.remove(), 6000);
}

// ---- status, session ------------------------------------------------------------------------

function onStatusItem(item) {
  if (item.kind !== 'status' && item.kind !== 'snapshot') return;
  const s = item.status ?? item;
  $('st-backend').textContent = s.backend ?? 'none';
  $('st-backend').className = s.backend ? 'up' : 'down';
  $('st-rate').textContent = s.tick_rate !== undefined ? Math.round(s.tick_rate).toLocaleString('en-US') : '—';
  $('st-gaps').textContent = s.gaps_filled ?? '—';
  $('st-history').textContent = s.history_store ?? '—';
  $('st-gateway').textContent = s.gateway ?? '—';
}

function showConnection({ status, url }) {
  const box = $('conn-state');
  box.dataset.status = status;
  const where = url ? url.replace(/^https?:\/\//, '') : '';
  const name = connection.welcome?.gateway;
  $('conn-text').textContent = status === Status.LIVE ? `live · ${name ? `${name} ` : ''}${where}` : `${status}${where ? ` · ${where}` : ''}`;
  renderOrders();
}

function showCounters() {
  const c = connection.counters;
  $('st-reconnects').textContent = c.reconnects;
  $('st-dups').textContent = c.duplicates;
  $('st-resets').textContent = c.resets;
  $('st-rtt').textContent = connection.rttMs === null ? '—' : `${connection.rttMs} ms`;
  $('st-outage').textContent = c.lastOutageMs === null ? '—' : `${Math.round(c.lastOutageMs)} ms`;
}

function showSession() {
  const session = connection.session;
  $('login').hidden = Boolean(session);
  $('user-box').hidden = !session;
  $('user').textContent = session ? `${session.user} · ${session.accounts.join(', ')}` : '';
  const accounts = session?.accounts ?? [];
  $('account').replaceChildren(...accounts.map((a) => el('option', { value: a }, a)));
  $('account-field').hidden = accounts.length < 2;
  if (!session) setTimeout(() => $('login-user').focus(), 0);
}

async function onLogin(event) {
  event.preventDefault();
  $('login-error').textContent = '';
  const key = $('login-key').value.trim();
  const credentials = key ? { api_key: key } : { user: $('login-user').value.trim(), password: $('login-password').value };
  $('login-submit').disabled = true;
  try {
    await connection.login(credentials);
    $('login-password').value = '';
    showSession();
  } catch (err) {
    $('login-error').textContent = err instanceof AuthError ? 'Wrong user, password or key' : err.message;
  } finally {
    $('login-submit').disabled = false;
  }
}

// ---- start ----------------------------------------------------------------------------------

async function loadSymbols() {
  let found = [];
  try {
    found = await udf.search('', { limit: 50 });
  } catch {
    found = [];
  }
  state.symbols = found.map((s) => ({ symbol: s.symbol, description: s.description, precision: 5 }));
  await Promise.all(state.symbols.map(async (s) => {
    try {
      const info = await udf.symbol(s.symbol);
      s.precision = Math.max(0, Math.round(Math.log10(info.pricescale ?? 100000)));
    } catch {
      // keep the default precision
    }
  }));
  if (state.symbols.length === 0 && state.symbol) state.symbols = [{ symbol: state.symbol, precision: 5 }];
  $('symbol').replaceChildren(...state.symbols.map((s) => el('option', { value: s.symbol }, s.symbol)));
  if (!state.symbol || !state.symbols.some((s) => s.symbol === state.symbol)) state.symbol = state.symbols[0]?.symbol ?? 'EURUSD';
}

function wire() {
  $('resolutions').replaceChildren(...RESOLUTIONS.map((r) => el('button', { type: 'button', 'data-res': r, 'data-testid': `res-${r}`, id: `res-${r}`,
    onclick: () => watch(state.symbol, r) }, r === '1S' ? '1s' : r === '1D' ? '1D' : r === '60' ? '1h' : `${r}m`)));
  $('symbol').addEventListener('change', (e) => watch(e.target.value, state.resolution));
  $('side-buy').addEventListener('click', () => { state.side = 'buy'; renderTicket(); });
  $('side-sell').addEventListener('click', () => { state.side = 'sell'; renderTicket(); });
  $('type-market').addEventListener('click', () => { state.type = 'market'; renderTicket(); });
  $('type-limit').addEventListener('click', () => {
    state.type = 'limit';
    if (!$('price').value && state.lastQuote) $('price').value = (state.side === 'buy' ? state.lastQuote.bid : state.lastQuote.ask).toFixed(state.precision);
    renderTicket();
  });
  $('qty').addEventListener('input', renderTicket);
  $('price').addEventListener('input', renderTicket);
  $('place').addEventListener('click', placeFromTicket);
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', async () => { await connection.logout(); showSession(); });
  $('chart').addEventListener('mouseenter', () => { chartHasCrosshair = true; });
  $('chart').addEventListener('mouseleave', () => { chartHasCrosshair = false; showOhlc(null); });

  connection.on('status', showConnection);
  connection.on('counters', showCounters);
  connection.on('welcome', showCounters);
  connection.on('queue', renderOrders);
  connection.on('auth', () => { showSession(); $('login-error').textContent = 'Session ended: log in again'; });
  connection.on('order_ack', (a) => toast(`Ack ${a.order_id ?? ''} · ${a.state ?? ''}`, 'good', a.client_order_id));
  connection.on('order_reject', (r) => toast(`Rejected: ${r.reason} ${r.message ?? ''}`, 'bad', r.client_order_id));
  connection.on('error', (e) => toast(`${e.code}: ${e.message ?? ''}`, 'bad'));
  book.on('change', renderOrders);
  book.on('fill', (f) => toast(`Filled ${f.side?.toUpperCase()} ${qtyFmt(f.quantity)} ${f.symbol} @ ${fmt(f.price)}`, 'good', f.client_order_id));
  connection.subscribe('status', onStatusItem);
}

async function main() {
  wire();
  showSession();
  drawOrders();
  await Promise.all([createChart(), loadSymbols(), pinned.length ? null : connection.learnGateways(location.origin)]);
  watch(state.symbol, state.resolution);
  connection.start();
  window.tickmesh = {
    connection, book, checks,
    bars: () => state.series.all(),
    stream: () => barsStream(state.symbol, state.resolution),
    counters: () => ({ ...connection.counters, ...checks, seriesIgnored: state.series.ignored }),
    lastPlaced: () => state.lastPlaced ?? null,
    ready: true,
  };
}

main().catch((err) => {
  console.error(err);
  document.body.dataset.error = err.message;
});
