import test from 'node:test';
import assert from 'node:assert/strict';
import { Connection, MemoryStorage } from '../src/connection.js';
import { OrderBook, applyFill } from '../src/orders.js';
import {
  ConnectionStatus, OrderStatus, OrderType, Side, createBroker, fromPreOrder, orderStatusOf, toTvOrder,
} from '../src/broker.js';
import { FakeClock, fakeSocketClass, welcome } from '../testing/fakes.js';

const order = (extra) => ({
  account: 'ACC-ALICE', client_order_id: 'c-1', order_id: 'O-1', symbol: 'EURUSD', side: 'buy',
  type: 'limit', quantity: 5, price: 1.1, state: 'ACCEPTED', filled_quantity: 0, avg_price: 0,
  updated_ms: 1, ...extra,
});

test('our order states map onto TradingView\'s OrderStatus', () => {
  const table = {
    ACCEPTED: OrderStatus.Working, ROUTED: OrderStatus.Working, PARTIALLY_FILLED: OrderStatus.Working,
    FILLED: OrderStatus.Filled, REJECTED: OrderStatus.Rejected, CANCELLED: OrderStatus.Canceled,
    EXPIRED: OrderStatus.Canceled, SOMETHING_NEW: OrderStatus.Inactive,
  };
  for (const [state, status] of Object.entries(table)) assert.equal(orderStatusOf(state), status, state);
  assert.deepEqual([OrderStatus.Canceled, OrderStatus.Filled, OrderStatus.Inactive, OrderStatus.Placing,
    OrderStatus.Rejected, OrderStatus.Working], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual([OrderType.Limit, OrderType.Market, Side.Buy, Side.Sell], [1, 2, 1, -1]);
});

test('orders and pre-orders convert both ways', () => {
  assert.deepEqual(toTvOrder(order({ side: 'sell', state: 'PARTIALLY_FILLED', filled_quantity: 2, avg_price: 1.1 })), {
    id: 'c-1', symbol: 'EURUSD', type: OrderType.Limit, side: Side.Sell, qty: 5, status: OrderStatus.Working,
    filledQty: 2, avgPrice: 1.1, updateTime: 1, limitPrice: 1.1,
  });
  assert.equal(toTvOrder(order({ type: 'market', price: null })).limitPrice, undefined);
  assert.deepEqual(fromPreOrder({ symbol: 'EURUSD', type: OrderType.Market, side: Side.Sell, qty: 3 }, 'A'),
    { account: 'A', symbol: 'EURUSD', side: 'sell', type: 'market', quantity: 3 });
  assert.deepEqual(fromPreOrder({ symbol: 'XAU', type: OrderType.Limit, side: Side.Buy, qty: 1, limitPrice: 2000 }, 'A'),
    { account: 'A', symbol: 'XAU', side: 'buy', type: 'limit', quantity: 1, price: 2000 });
});

test('positions follow fills: averaging in, realizing on the way out, crossing zero', () => {
  let p = { account: 'A', symbol: 'S', quantity: 0, avg_price: 0, realized_pnl: 0 };
  p = applyFill(p, 'buy', 2, 10);
  p = applyFill(p, 'buy', 2, 12);
  assert.deepEqual([p.quantity, p.avg_price, p.realized_pnl], [4, 11, 0]);
  p = applyFill(p, 'sell', 1, 15);
  assert.deepEqual([p.quantity, p.avg_price, p.realized_pnl], [3, 11, 4]);
  p = applyFill(p, 'sell', 5, 9);
  assert.deepEqual([p.quantity, p.avg_price, p.realized_pnl], [-2, 9, -2]);
  p = applyFill(p, 'buy', 2, 8);
  assert.deepEqual([p.quantity, p.avg_price, p.realized_pnl], [0, 0, 0]);
});

function live() {
  const storage = new MemoryStorage();
  storage.setItem('tickmesh.session', JSON.stringify({ token: 'tok', user: 'alice', accounts: ['ACC-ALICE'] }));
  const FakeSocket = fakeSocketClass();
  const conn = new Connection({ urls: ['http://127.0.0.1:1'], WebSocket: FakeSocket, storage, clock: new FakeClock(), random: () => 0.5 });
  const host = { calls: [] };
  for (const name of ['orderUpdate', 'positionUpdate', 'executionUpdate', 'connectionStatusUpdate']) {
    host[name] = (arg) => host.calls.push([name, arg]);
  }
  const book = new OrderBook(conn);
  const broker = createBroker(host, conn, book);
  conn.start();
  const socket = FakeSocket.last();
  socket.open();
  socket.receive(welcome());
  return { conn, socket, host, book, broker };
}

test('the broker and the panel read one order book: the same orders, fills and positions; the host hears every change', async () => {
  const { conn, socket, host, book, broker } = live();
  assert.equal(broker.connectionStatus(), ConnectionStatus.Connected);
  assert.deepEqual(await broker.accountsMetainfo(), [{ id: 'ACC-ALICE', name: 'ACC-ALICE' }]);
  assert.equal(broker.currentAccount(), 'ACC-ALICE');
  assert.deepEqual(host.calls.filter(([n]) => n === 'connectionStatusUpdate').map(([, s]) => s), [ConnectionStatus.Connecting, ConnectionStatus.Connected]);
  socket.receive({ op: 'batch', t: 0, items: [{ stream: 'orders', epoch: 1, seq: 4, kind: 'snapshot',
    orders: [order({ client_order_id: 'old', order_id: 'O-0', state: 'FILLED', filled_quantity: 5 })],
    fills: [{ exec_id: 'E-0', quantity: 5, price: 1.1, time_ms: 1, account: 'ACC-ALICE', symbol: 'EURUSD', side: 'buy' }],
    positions: [{ account: 'ACC-ALICE', symbol: 'EURUSD', quantity: 5, avg_price: 1.1, realized_pnl: 0 }] }] });
  host.calls.length = 0;

  const { orderId } = await broker.placeOrder({ symbol: 'EURUSD', type: OrderType.Market, side: Side.Sell, qty: 2 });
  assert.deepEqual(host.calls.map(([n, o]) => [n, o.id, o.status]), [['orderUpdate', orderId, OrderStatus.Placing]]);
  const [place] = socket.framesOf('place');
  assert.deepEqual(place.order, { account: 'ACC-ALICE', symbol: 'EURUSD', side: 'sell', type: 'market', quantity: 2, client_order_id: orderId });
  assert.equal((await broker.orders()).find((o) => o.id === orderId).status, OrderStatus.Placing);

  socket.receive({ op: 'order_ack', id: place.id, client_order_id: orderId, order_id: 'O-2', state: 'ACCEPTED' });
  const written = order({ client_order_id: orderId, order_id: 'O-2', side: 'sell', type: 'market', quantity: 2, price: null, state: 'FILLED', filled_quantity: 2, avg_price: 1.2, updated_ms: 5 });
  socket.receive({ op: 'batch', t: 0, items: [
    { stream: 'orders', epoch: 1, seq: 5, kind: 'order', order: written, fills: [{ exec_id: 'E-2', quantity: 2, price: 1.2, time_ms: 5 }] },
    { stream: 'orders', epoch: 1, seq: 5, kind: 'order', order: written, fills: [{ exec_id: 'E-2', quantity: 2, price: 1.2, time_ms: 5 }] },
  ] });
  assert.deepEqual(host.calls.slice(1).map(([n, o]) => [n, o.id, o.status ?? o.qty]), [
    ['orderUpdate', orderId, OrderStatus.Filled],
    ['executionUpdate', 'E-2', 2],
    ['positionUpdate', 'ACC-ALICE/EURUSD', 3],
  ], 'the duplicate item reaches nobody');

  const tvOrders = await broker.orders();
  assert.deepEqual(tvOrders.map((o) => o.id).sort(), book.allOrders().map((o) => o.client_order_id).sort(), 'the same orders as the panel');
  assert.equal(tvOrders.filter((o) => o.id === orderId).length, 1, 'once');
  assert.deepEqual(await broker.positions(), [{ id: 'ACC-ALICE/EURUSD', symbol: 'EURUSD', qty: 3, side: Side.Buy, avgPrice: 1.1 }]);
  assert.deepEqual((await broker.executions('EURUSD')).map((e) => [e.id, e.side]), [['E-0', Side.Buy], ['E-2', Side.Sell]]);
  assert.equal(book.allPositions()[0].realized_pnl.toFixed(4), '0.2000');

  // Modify and cancel go out as replace and cancel of that client order id.
  socket.receive({ op: 'batch', t: 0, items: [{ stream: 'orders', epoch: 1, seq: 6, kind: 'order', order: order({ client_order_id: 'lim', updated_ms: 6 }), fills: [] }] });
  await broker.modifyOrder({ id: 'lim', qty: 7, limitPrice: 1.05 });
  await broker.cancelOrder('lim');
  const [replace] = socket.framesOf('replace');
  const [cancel] = socket.framesOf('cancel');
  assert.deepEqual([replace.target, replace.quantity, replace.price, replace.account], ['lim', 7, 1.05, 'ACC-ALICE']);
  assert.deepEqual([cancel.target, cancel.account], ['lim', 'ACC-ALICE']);

  // A rejected place: Placing becomes Rejected for the host.
  const { orderId: bad } = await broker.placeOrder({ symbol: 'EURUSD', type: OrderType.Limit, side: Side.Buy, qty: 1, limitPrice: 1 });
  const badFrame = socket.framesOf('place').at(-1);
  socket.receive({ op: 'order_reject', id: badFrame.id, client_order_id: bad, reason: 'INVALID', message: 'no', retryable: false });
  assert.deepEqual(host.calls.at(-1).slice(0, 1).concat([host.calls.at(-1)[1].id, host.calls.at(-1)[1].status]), ['orderUpdate', bad, OrderStatus.Rejected]);

  socket.drop();
  assert.equal(broker.connectionStatus(), ConnectionStatus.Connecting);
  conn.stop();
  assert.equal(broker.connectionStatus(), ConnectionStatus.Disconnected);
  broker.destroy();
});
