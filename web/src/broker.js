// TradingView Broker API adapter (what the Trading Terminal calls) over the same order book as
// the local panel (web/src/orders.js), so both show the same orders, fills and positions.
// "The library itself doesn't keep any trading state": every answer comes from the book, and
// every change is pushed to the host (`orderUpdate`, `positionUpdate`, `executionUpdate`,
// `connectionStatusUpdate`). Ids: an order's id is its client order id (known before the ack,
// so a placed order shows as Placing at once); a position's id is `account/symbol`.

import { OrderBook, positionKey } from './orders.js';
import { Status } from './connection.js';

export const OrderStatus = Object.freeze({ Canceled: 1, Filled: 2, Inactive: 3, Placing: 4, Rejected: 5, Working: 6 });
export const OrderType = Object.freeze({ Limit: 1, Market: 2 });
export const Side = Object.freeze({ Buy: 1, Sell: -1 });
export const ConnectionStatus = Object.freeze({ Connected: 1, Connecting: 2, Disconnected: 3, Error: 4 });

const STATUS_OF_STATE = Object.freeze({
  ACCEPTED: OrderStatus.Working,
  ROUTED: OrderStatus.Working,
  PARTIALLY_FILLED: OrderStatus.Working,
  FILLED: OrderStatus.Filled,
  REJECTED: OrderStatus.Rejected,
  CANCELLED: OrderStatus.Canceled,
  EXPIRED: OrderStatus.Canceled,
});

/** Our order state as TradingView's OrderStatus (unknown: Inactive). */
export function orderStatusOf(state) {
  return STATUS_OF_STATE[state] ?? OrderStatus.Inactive;
}

/** One of our orders (docs/GATEWAY.md section 6) as TradingView's Order. */
export function toTvOrder(order) {
  const tv = {
    id: order.client_order_id,
    symbol: order.symbol,
    type: order.type === 'limit' ? OrderType.Limit : OrderType.Market,
    side: order.side === 'buy' ? Side.Buy : Side.Sell,
    qty: order.quantity,
    status: orderStatusOf(order.state),
    filledQty: order.filled_quantity ?? 0,
    avgPrice: order.avg_price ?? 0,
    updateTime: order.updated_ms,
  };
  if (order.type === 'limit') tv.limitPrice = order.price;
  return tv;
}

/** A position of ours (signed quantity) as TradingView's Position (side and a positive qty). */
export function toTvPosition(position) {
  return {
    id: positionKey(position.account, position.symbol),
    symbol: position.symbol,
    qty: Math.abs(position.quantity),
    side: position.quantity < 0 ? Side.Sell : Side.Buy,
    avgPrice: position.avg_price,
  };
}

/** A fill of ours as TradingView's Execution. */
export function toTvExecution(fill) {
  return {
    id: fill.exec_id,
    symbol: fill.symbol,
    price: fill.price,
    qty: fill.quantity,
    side: fill.side === 'buy' ? Side.Buy : Side.Sell,
    time: fill.time_ms,
  };
}

/** TradingView's PreOrder as our `place` order. */
export function fromPreOrder(preOrder, account) {
  const order = {
    account,
    symbol: preOrder.symbol,
    side: preOrder.side === Side.Sell ? 'sell' : 'buy',
    type: preOrder.type === OrderType.Limit ? 'limit' : 'market',
    quantity: preOrder.qty,
  };
  if (order.type === 'limit') order.price = preOrder.limitPrice;
  return order;
}

export function connectionStatusOf(status) {
  switch (status) {
    case Status.LIVE: return ConnectionStatus.Connected;
    case Status.CONNECTING:
    case Status.RECONNECTING: return ConnectionStatus.Connecting;
    default: return ConnectionStatus.Disconnected;
  }
}

/**
 * The Broker API object for TradingView's `broker_factory`: `host` is the library's
 * IBrokerConnectionAdapterHost; `book` is the order book the panel uses (one is made if not
 * given). Methods answer with Promises, as the library expects.
 */
export function createBroker(host, connection, book = new OrderBook(connection)) {
  const placing = new Map(); // client order id -> TradingView order shown as Placing
  const account = () => connection.session?.accounts?.[0];
  const findOrder = (id) => book.allOrders().find((o) => o.client_order_id === id);

  const offs = [
    book.on('snapshot', () => {
      for (const order of book.allOrders()) host.orderUpdate(toTvOrder(order));
      for (const p of book.allPositions()) host.positionUpdate(toTvPosition(p));
    }),
    book.on('order', ({ order }) => {
      placing.delete(order.client_order_id);
      host.orderUpdate(toTvOrder(order));
    }),
    book.on('fill', (fill) => host.executionUpdate(toTvExecution(fill))),
    book.on('position', (p) => host.positionUpdate(toTvPosition(p))),
    connection.on('status', ({ status }) => host.connectionStatusUpdate(connectionStatusOf(status))),
    connection.on('order_reject', (reject) => {
      const shown = placing.get(reject.client_order_id);
      if (!shown) return;
      placing.delete(reject.client_order_id);
      host.orderUpdate({ ...shown, status: OrderStatus.Rejected });
      host.showNotification?.('Order rejected', `${reject.reason}: ${reject.message ?? ''}`, 0);
    }),
  ];

  return {
    connectionStatus() {
      return connectionStatusOf(connection.status);
    },

    async isTradable() {
      return true;
    },

    /** The session's accounts; TradingView's account switcher lists them. */
    async accountsMetainfo() {
      return (connection.session?.accounts ?? []).map((id) => ({ id, name: id }));
    },

    currentAccount() {
      return account();
    },

    chartContextMenuActions(context, options) {
      return host.defaultContextMenuActions ? host.defaultContextMenuActions(context, options) : Promise.resolve([]);
    },

    async orders() {
      return [...book.allOrders().map(toTvOrder), ...placing.values()].map((o) => ({ ...o }));
    },

    async positions() {
      return book.allPositions().filter((p) => p.quantity !== 0).map(toTvPosition);
    },

    async executions(symbol) {
      return book.fillsOf(symbol).map(toTvExecution);
    },

    async placeOrder(preOrder) {
      const order = fromPreOrder(preOrder, account());
      const id = connection.place(order);
      const shown = toTvOrder({ ...order, client_order_id: id, state: null, filled_quantity: 0 });
      shown.status = OrderStatus.Placing;
      placing.set(id, shown);
      host.orderUpdate({ ...shown });
      return { orderId: id };
    },

    async modifyOrder(order) {
      const ours = findOrder(order.id);
      if (!ours) throw new Error(`no order ${order.id}`);
      connection.replace(order.id, {
        account: ours.account, quantity: order.qty, price: order.limitPrice ?? ours.price,
      });
    },

    async cancelOrder(orderId) {
      const ours = findOrder(orderId);
      connection.cancel(orderId, { account: ours?.account ?? account() });
    },

    /** Not the library's: stop pushing to the host. */
    destroy() {
      for (const off of offs) off();
    },
  };
}
