// The checkout page: stockcore's HTTP/JSON API through the gateway, nothing else.
//
// The shopper is the gateway's session: POST /session (same origin; the session is an
// HttpOnly cookie this script never sees) names the customer and gives a token bound to
// that customer alone, valid for minutes, which the page asks for again before it runs
// out. The cart is one reservation held for the shopper: the first product added holds
// it (Reserve), every later change sets one line of it (SetReservationLine: +, - or
// remove), and each change holds the cart for the hold time again, counted down on the
// page; an abandoned cart expires as a hold, leaving no order behind. "Pay" makes the
// order of the cart (CreateOrder with reservationId: the reservation becomes the order's
// hold, so the order exists once, at checkout) and goes to the payment provider
// (simulated: POST /session/pay), which charges it and tells stockcore by its signed
// webhook: the page's token may not confirm a payment. The answer comes once the order
// is paid, or says the confirmation is still on its way. The order's status follows
// WatchOrders (a newline-delimited JSON stream).
//
// Query parameter: ?hold=SECONDS (how long the cart, then the order, is held; 600 by
// default).
"use strict";

const params = new URLSearchParams(location.search);
const holdSeconds = Math.max(1, Math.min(86400, Number(params.get("hold")) || 600));
const STOCK_POLL_MS = 1000;
// The token is asked for again when this share of its life has passed.
const TOKEN_REFRESH_AT = 0.8;

const $ = (id) => document.getElementById(id);
let catalogue = { currency: "EUR", products: [] };
let available = {}; // sku -> units available now (null: not sold here)
let cart = {}; // sku -> quantity, as the cart's reservation holds them
let cartId = null; // the cart's reservation id (and the order's, once it is made)
let cartExpires = null; // when the cart's hold lapses, unless changed again (ms)
let changes = 0; // changes made to the cart, which name the next one
let order = null; // the order made of the cart, once paid for
let watching = null; // AbortController of the WatchOrders stream
let busy = false;
let shopper = null; // the session's customer id
let token = null; // the session's token, and when to ask for the next one
let tokenRefreshAt = 0;
let sessionStarted = null; // the POST /session in flight, if any

function randomId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function money(minor) {
  return new Intl.NumberFormat("en", { style: "currency", currency: catalogue.currency })
    .format(Number(minor) / 100);
}

function bare(status) {
  return (status || "").replace(/^ORDER_STATUS_/, "");
}

// A JSON answer; a non-2xx one throws its google.rpc.Status.
async function answer(reply) {
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    const error = new Error(data.message || reply.statusText);
    error.httpStatus = reply.status;
    error.details = data.details || [];
    throw error;
  }
  return data;
}

// The session: who the shopper is, and a fresh token for them.
function startSession() {
  if (!sessionStarted) {
    sessionStarted = fetch("/session", { method: "POST", credentials: "same-origin" })
      .then(answer)
      .then((data) => {
        shopper = data.customerId;
        token = data.token;
        tokenRefreshAt = Date.now() + Number(data.expiresIn) * 1000 * TOKEN_REFRESH_AT;
        $("shopper").textContent = shopper;
      })
      .finally(() => { sessionStarted = null; });
  }
  return sessionStarted;
}

// The bearer token the page calls with, asked for again when it is about to run out.
async function authorization() {
  if (!token || Date.now() >= tokenRefreshAt) await startSession();
  return { authorization: "Bearer " + token };
}

// One API call: JSON in, JSON out; a non-2xx answer throws its google.rpc.Status.
async function api(method, path, body, idempotencyKey) {
  const headers = { "content-type": "application/json", ...(await authorization()) };
  if (idempotencyKey) headers["idempotency-key"] = idempotencyKey;
  return answer(await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  }));
}

function detailsOf(error, type) {
  return error.details.filter((d) => d["@type"] === "type.googleapis.com/google.rpc." + type);
}

function notify(text, kind) {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = "notice" + (kind ? " " + kind : "");
  notice.hidden = !text;
}

// --- products and their availability ------------------------------------------------

function renderProducts() {
  const list = $("products");
  for (const product of catalogue.products) {
    let item = list.querySelector(`[data-sku="${product.sku}"]`);
    if (!item) {
      item = document.createElement("li");
      item.className = "product";
      item.dataset.sku = product.sku;
      item.innerHTML = '<span class="name"></span><span class="price"></span>' +
        '<span class="availability"></span><button type="button">Add to cart</button>';
      item.querySelector(".name").textContent = product.name;
      item.querySelector(".price").textContent = money(product.price_minor);
      item.querySelector("button").addEventListener("click", () => addToCart(product.sku));
      list.appendChild(item);
    }
    const units = available[product.sku];
    const soldOut = units === 0;
    const label = item.querySelector(".availability");
    label.textContent = units === undefined ? "…" : units === null ? "not sold here"
      : soldOut ? "Sold out" : units <= 5 ? `Only ${units} left` : `${units} available`;
    label.className = "availability" + (soldOut || units === null ? " sold-out" : units <= 5 ? " low" : "");
    item.classList.toggle("sold-out", soldOut);
    item.querySelector("button").disabled = busy || !units;
  }
}

async function refreshStock() {
  let skus = catalogue.products.map((p) => p.sku).filter((sku) => available[sku] !== null);
  while (skus.length) {
    try {
      const query = skus.map((sku) => "skus=" + encodeURIComponent(sku)).join("&");
      const data = await api("GET", "/v1/stock?" + query);
      for (const level of data.levels || []) available[level.sku] = Number(level.available);
      break;
    } catch (error) {
      // An unknown SKU fails the whole read: mark it, and read the others again.
      const unknown = detailsOf(error, "ResourceInfo").map((d) => d.resourceName);
      if (error.httpStatus !== 404 || !unknown.length) throw error;
      for (const sku of unknown) available[sku] = null;
      skus = skus.filter((sku) => !unknown.includes(sku));
    }
  }
  renderProducts();
}

async function pollStock() {
  try {
    await refreshStock();
  } catch (error) {
    notify("Availability is not reachable just now: " + error.message);
  }
  setTimeout(pollStock, STOCK_POLL_MS);
}

// --- the cart: one held reservation, changed line by line ---------------------------

function orderLines(lines) {
  return Object.entries(lines).map(([sku, quantity]) => ({
    sku,
    quantity: String(quantity),
    unitPriceMinor: String(catalogue.products.find((p) => p.sku === sku).price_minor),
  }));
}

// The cart as the server answered: its lines and when its hold lapses.
function held(reservation) {
  cart = {};
  for (const line of reservation.lines || []) cart[line.sku] = Number(line.quantity);
  cartExpires = Date.parse(reservation.expireTime);
}

function forgetCart() {
  cart = {};
  cartId = null;
  cartExpires = null;
  changes = 0;
}

// Set the cart's line of `sku` to `quantity` units (0 removes it): the first line holds
// a new reservation, every other change sets one line of it. Each change names itself
// (Idempotency-Key), so a retry never applies it twice.
async function setLine(sku, quantity) {
  if (!cartId) {
    if (quantity === 0) return;
    const id = "web-" + randomId();
    const data = await api("POST", "/v1/reservations", {
      lines: [{ sku, quantity: String(quantity) }],
      ttl: holdSeconds + "s",
    }, id);
    cartId = id;
    changes = 0;
    held(data.reservation);
    return;
  }
  changes += 1;
  const data = await api("POST", `/v1/reservations/${encodeURIComponent(cartId)}:setLine`, {
    sku,
    quantity: String(quantity),
    ttl: holdSeconds + "s",
  }, `${cartId}/${changes}`);
  held(data.reservation);
}

async function withBusy(work) {
  busy = true;
  renderProducts();
  renderCart();
  try {
    await work();
  } finally {
    busy = false;
    renderProducts();
    renderCart();
  }
}

function changeCart(sku, quantity) {
  return withBusy(async () => {
    if (order && bare(order.status) !== "PENDING_PAYMENT") {
      // The last cart was ordered: this change starts a new one.
      order = null;
      stopWatching();
      $("order").hidden = true;
      forgetCart();
    }
    try {
      await setLine(sku, quantity);
      notify("");
    } catch (error) {
      const short = detailsOf(error, "PreconditionFailure").flatMap((d) => d.violations || []);
      if (short.some((v) => v.type === "STATUS")) {
        // The cart's hold ended (expired): start again with this product alone.
        forgetCart();
        notify("Your cart's hold had expired; it starts again.", "info");
        if (quantity > 0) await setLine(sku, quantity).catch((again) => notify(again.message));
      } else if (short.length) {
        for (const v of short) {
          const left = /available (\d+)/.exec(v.description);
          if (left) available[v.subject] = Math.max(0, Number(left[1]) - (cart[v.subject] || 0));
        }
        notify("Sold out: " + short.map((v) => `${v.subject} (${v.description})`).join(", "));
      } else {
        notify("Could not change the cart: " + error.message);
      }
    }
    refreshStock().catch(() => {});
  });
}

function addToCart(sku) {
  return changeCart(sku, (cart[sku] || 0) + 1);
}

function emptyCart() {
  return withBusy(async () => {
    if (cartId && !order) {
      await api("POST", `/v1/reservations/${encodeURIComponent(cartId)}:release`, {})
        .catch((error) => notify("Could not release the cart: " + error.message));
    }
    forgetCart();
    order = null;
    stopWatching();
    $("order").hidden = true;
    refreshStock().catch(() => {});
  });
}

// The order, made of the cart's reservation: the same lines, the same hold, created once
// (a retry, Idempotency-Key the cart's id, answers with the same order).
async function orderTheCart() {
  const data = await api("POST", "/v1/orders", {
    reservationId: cartId,
    customerId: shopper,
    lines: orderLines(cart),
    currencyCode: catalogue.currency,
    paymentWindow: holdSeconds + "s",
  }, cartId);
  return data.order;
}

function pay() {
  return withBusy(async () => {
    try {
      if (!order) {
        order = await orderTheCart();
        watch(order.orderId);
      }
      const paying = order;
      // The (simulated) payment provider charges the order's total and tells stockcore.
      const charged = await answer(await fetch("/session/pay", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ orderId: paying.orderId }),
      }));
      const data = await api("GET", `/v1/orders/${encodeURIComponent(paying.orderId)}`);
      order = data.order;
      forgetCart();
      if (charged.status === "PENDING" && bare(order.status) === "PENDING_PAYMENT") {
        notify("Payment taken: waiting for the payment provider to confirm it.", "info");
      } else {
        notify("Thank you! Payment received.", "info");
      }
    } catch (error) {
      notify("Payment failed: " + error.message);
    }
  });
}

function renderCart() {
  const lines = Object.entries(cart);
  const ordered = order && bare(order.status) !== "PENDING_PAYMENT";
  $("cart-empty").hidden = lines.length > 0;
  $("cart").hidden = lines.length === 0;
  $("cart-lines").replaceChildren(...lines.map(([sku, quantity]) => {
    const li = document.createElement("li");
    li.dataset.sku = sku;
    const product = catalogue.products.find((p) => p.sku === sku);
    const text = document.createElement("span");
    text.className = "line";
    text.textContent = `${quantity} × ${product.name}`;
    li.appendChild(text);
    for (const [label, name, next] of [["−", "less", quantity - 1], ["+", "more", quantity + 1],
      ["Remove", "remove", 0]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary " + name;
      button.textContent = label;
      button.disabled = busy || Boolean(order);
      button.addEventListener("click", () => changeCart(sku, next));
      li.appendChild(button);
    }
    return li;
  }));
  const total = lines.reduce((sum, [sku, quantity]) =>
    sum + quantity * catalogue.products.find((p) => p.sku === sku).price_minor, 0);
  $("cart-total").textContent = lines.length ? money(order ? order.totalMinor : total) : "";
  $("pay").disabled = busy || !lines.length || ordered || expiresAt() <= Date.now();
  $("empty").disabled = busy;
  if (order) {
    $("order").hidden = false;
    $("order-id").textContent = order.orderId;
    $("order-status").textContent = bare(order.status);
    $("order-status").dataset.status = bare(order.status);
  }
  tick();
}

// When the hold lapses: the cart's, or, once ordered, the order's payment deadline.
function expiresAt() {
  if (order && order.paymentDeadline) return Date.parse(order.paymentDeadline);
  return cartExpires || 0;
}

// The hold's countdown.
function tick() {
  const hold = $("hold");
  const pending = order ? bare(order.status) === "PENDING_PAYMENT" : Boolean(cartId);
  const left = Math.max(0, Math.ceil((expiresAt() - Date.now()) / 1000));
  if ((order && bare(order.status) === "EXPIRED") || (pending && left === 0)) {
    hold.className = "hold expired";
    hold.textContent = "Your hold expired: the items went back on sale.";
    $("pay").disabled = true;
    return;
  }
  if (!pending) {
    hold.className = "hold";
    hold.textContent = "";
    return;
  }
  hold.className = "hold" + (left <= 30 ? " ending" : "");
  const minutes = Math.floor(left / 60);
  const seconds = String(left % 60).padStart(2, "0");
  if (!$("countdown")) hold.innerHTML = 'Held for you for <strong id="countdown"></strong>';
  $("countdown").textContent = `${minutes}:${seconds}`;
}

// --- the order's status, live -------------------------------------------------------

function stopWatching() {
  if (watching) watching.abort();
  watching = null;
}

async function watch(orderId) {
  stopWatching();
  const control = new AbortController();
  watching = control;
  $("order-history").replaceChildren();
  let cursor = "0";
  while (!control.signal.aborted) {
    try {
      const reply = await fetch(
        `/v1/orders:watch?orderId=${encodeURIComponent(orderId)}&afterCursor=${cursor}`,
        { signal: control.signal, headers: await authorization() });
      if (!reply.ok) throw new Error(reply.statusText);
      const reader = reply.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (line) cursor = onEvent(JSON.parse(line), orderId) || cursor;
        }
      }
    } catch (error) {
      if (control.signal.aborted) return;
    }
    // The stream ended (idle timeout, server restart): resume after the last cursor.
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function onEvent(event, orderId) {
  if (event.orderId !== orderId) return event.cursor;
  if (event.change) {
    const li = document.createElement("li");
    const when = new Date(event.occurTime).toLocaleTimeString();
    li.textContent = `${when}: ${bare(event.change.toStatus)}`;
    $("order-history").appendChild(li);
  }
  if (event.order && order && order.orderId === orderId) {
    order = event.order;
    if (bare(order.status) === "EXPIRED") {
      notify("Your hold expired before payment; the items went back on sale.");
    }
    renderCart();
  }
  return event.cursor;
}

async function start() {
  $("pay").addEventListener("click", pay);
  $("empty").addEventListener("click", emptyCart);
  catalogue = await (await fetch("/catalogue.json")).json();
  renderProducts();
  renderCart();
  setInterval(tick, 250);
  try {
    await startSession();
  } catch (error) {
    notify("No checkout session: " + error.message);
  }
  pollStock();
}

start();
