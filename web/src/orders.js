// The state of a session's `orders` stream (docs/GATEWAY.md sections 4 and 6): orders, fills
// and positions, in one place, so the local panel and the Broker API adapter show the same.
//
// A `snapshot` item replaces everything (its positions are the gateway's); an `order` item
// replaces that order (keyed by account and client order id) and appends the fills it carries,
// each fill once (by exec_id), each new fill moving its position the way the history report
// computes positions (protocols/history/report.py: average price of the open position, realized
// PnL on the part that closes). Fills and finished orders are bounded: the oldest go first.

export const WORKING_STATES = Object.freeze(['ACCEPTED', 'ROUTED', 'PARTIALLY_FILLED']);
export const FINAL_STATES = Object.freeze(['FILLED', 'REJECTED', 'CANCELLED', 'EXPIRED']);
const EPS = 1e-9;

/** The order of an `order` item (its fields are the item's, or under `order`). */
export function orderOf(item) {
  const source = item.order && typeof item.order === 'object' ? item.order : item;
  const { stream, epoch, seq, kind, fills, ...order } = source;
  return order;
}

export function orderKey(order) {
  return `${order.account}/${order.client_order_id}`;
}

export function positionKey(account, symbol) {
  return `${account}/${symbol}`;
}

export function isWorking(order) {
  return WORKING_STATES.includes(order.state);
}

/** `position` moved by one fill of `quantity` at `price` on `side` ("buy"/"sell"); a new object. */
export function applyFill(position, side, quantity, price) {
  const p = { ...position };
  const signed = side === 'buy' ? quantity : -quantity;
  if (p.quantity * signed >= 0) {
    const total = p.quantity + signed;
    p.avg_price = (p.avg_price * Math.abs(p.quantity) + price * quantity) / Math.abs(total);
    p.quantity = total;
    return p;
  }
  const closing = Math.min(quantity, Math.abs(p.quantity));
  const direction = p.quantity > 0 ? 1 : -1;
  p.realized_pnl += (price - p.avg_price) * closing * direction;
  p.quantity += closing * -direction;
  const rest = quantity - closing;
  if (rest > EPS) {
    p.quantity = rest * -direction;
    p.avg_price = price;
  } else if (Math.abs(p.quantity) <= EPS) {
    p.quantity = 0;
    p.avg_price = 0;
  }
  return p;
}

export class OrderBook {
  /** Subscribes `connection` to `orders`; `close()` unsubscribes. */
  constructor(connection, { maxFills = 500, maxFinished = 500 } = {}) {
    this.maxFills = maxFills;
    this.maxFinished = maxFinished;
    this.orders = new Map(); // orderKey -> order
    this.fills = []; // oldest first
    this.positions = new Map(); // positionKey -> position
    this._execIds = new Set();
    this._listeners = new Map();
    this.ready = false; // a snapshot was applied
    this._unsubscribe = connection ? connection.subscribe('orders', (item) => this.apply(item)) : null;
  }

  close() {
    if (this._unsubscribe) this._unsubscribe();
    this._unsubscribe = null;
  }

  /** `fn(detail)` on `snapshot`, `order` ({order, previous}), `fill`, `position`, `change`. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event)?.delete(fn);
  }

  _emit(event, detail) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(detail);
      } catch (err) {
        console.error(`tickmesh: an order book ${event} listener failed`, err);
      }
    }
  }

  apply(item) {
    if (item.kind === 'snapshot') this._snapshot(item);
    else if (item.kind === 'order') this._order(item);
    else return; // `reset` is followed by a snapshot, which is what replaces the state
    this._emit('change', this);
  }

  _snapshot(item) {
    this.orders = new Map();
    for (const raw of item.orders ?? []) {
      const order = orderOf(raw);
      this.orders.set(orderKey(order), order);
    }
    this.fills = [];
    this._execIds = new Set();
    for (const fill of item.fills ?? []) this._keepFill({ ...fill });
    this.positions = new Map();
    for (const p of item.positions ?? []) this.positions.set(positionKey(p.account, p.symbol), { ...p });
    this.ready = true;
    this._emit('snapshot', this);
  }

  _order(item) {
    const order = orderOf(item);
    const key = orderKey(order);
    const previous = this.orders.get(key) ?? null;
    if (previous && (previous.updated_ms ?? 0) > (order.updated_ms ?? 0)) return; // stale write
    this.orders.delete(key); // re-inserted last: the map stays in update order
    this.orders.set(key, order);
    this._trimFinished();
    this._emit('order', { order: { ...order }, previous });
    for (const raw of item.fills ?? []) {
      const fill = {
        ...raw, account: order.account, symbol: order.symbol, side: order.side,
        client_order_id: order.client_order_id, order_id: order.order_id,
      };
      if (!this._keepFill(fill)) continue;
      const key2 = positionKey(order.account, order.symbol);
      const before = this.positions.get(key2) ??
        { account: order.account, symbol: order.symbol, quantity: 0, avg_price: 0, realized_pnl: 0 };
      const after = applyFill(before, order.side, fill.quantity, fill.price);
      this.positions.set(key2, after);
      this._emit('fill', { ...fill });
      this._emit('position', { ...after });
    }
  }

  /** Keep a fill unless its exec_id was seen; true when kept. */
  _keepFill(fill) {
    if (fill.exec_id !== undefined) {
      if (this._execIds.has(fill.exec_id)) return false;
      this._execIds.add(fill.exec_id);
    }
    this.fills.push(fill);
    while (this.fills.length > this.maxFills) {
      const old = this.fills.shift();
      this._execIds.delete(old.exec_id);
    }
    return true;
  }

  _trimFinished() {
    const finished = [...this.orders.entries()].filter(([, o]) => !isWorking(o));
    for (const [key] of finished.slice(0, Math.max(0, finished.length - this.maxFinished))) {
      this.orders.delete(key);
    }
  }

  /** Copies of the working orders, oldest update first. */
  workingOrders() {
    return [...this.orders.values()].filter(isWorking).map((o) => ({ ...o }));
  }

  /** Copies of every order held, oldest update first. */
  allOrders() {
    return [...this.orders.values()].map((o) => ({ ...o }));
  }

  /** Copies of the fills, optionally of one symbol, oldest first. */
  fillsOf(symbol = null) {
    return this.fills.filter((f) => symbol === null || f.symbol === symbol).map((f) => ({ ...f }));
  }

  /** Copies of the positions, flat ones included. */
  allPositions() {
    return [...this.positions.values()].map((p) => ({ ...p }));
  }
}
