'use strict';
/**
 * A minimal Node.js server of Bifröst's wire protocol (shared/PROTOCOL.md), written the way a
 * JavaScript shop would: `ws` for websockets, `jsonwebtoken` for HS512 tokens.
 *
 * Why it exists: the benchmark needs a baseline that is neither a straw man nor a rewrite of
 * Bifröst. It keeps the idioms that make such a server fast (the secret imported once as a
 * KeyObject, each broadcast JSON-encoded once and handed to every socket as the same buffer)
 * and leaves out what the benchmark does not exercise (idle reaper, rate limits, origins).
 *
 * Environment: PORT (default 8080), HOST (default 127.0.0.1), JWT_SECRET (required, 32+ chars).
 */

const crypto = require('node:crypto');
const http = require('node:http');
const jwt = require('jsonwebtoken');
const { WebSocket, WebSocketServer } = require('ws');

const MAX_FRAME_BYTES = 65536;
const MAX_MESSAGE_BYTES = 65536;
const MAX_BODY_BYTES = 2 * MAX_MESSAGE_BYTES + 16 * 1024;
const MAX_CHANNELS = 100;
const ALGORITHMS = ['HS512'];

const secret = process.env.JWT_SECRET || '';
if (secret.length < 32) {
  console.error('reference server: set JWT_SECRET to 32 or more characters');
  process.exit(1);
}
// A string secret makes jsonwebtoken build a key object on every verify (~30x slower).
const key = crypto.createSecretKey(Buffer.from(secret, 'utf8'));

/** @type {Map<string, Set<WebSocket>>} channel name -> subscribed sockets */
const channels = new Map();
/** @type {Set<WebSocket>} every open socket, for /info.json and shutdown */
const sockets = new Set();
let deliveries = 0;

function verify(token) {
  return jwt.verify(token, key, { algorithms: ALGORITHMS });
}

function isStringList(value) {
  return Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string');
}

function frame(event, data) {
  return data === undefined ? JSON.stringify({ event }) : JSON.stringify({ event, data });
}

function subscribeChannels(ws, names) {
  for (const name of names) {
    if (ws.channels.has(name)) continue;
    ws.channels.add(name);
    let members = channels.get(name);
    if (members === undefined) {
      members = new Set();
      channels.set(name, members);
    }
    members.add(ws);
    ws.send(frame('subscribed', JSON.stringify({ channel: name })));
  }
}

function authenticate(ws, token) {
  let claims;
  try {
    claims = typeof token === 'string' ? verify(token) : null;
  } catch {
    claims = null;
  }
  const names = claims && claims.channels;
  const valid =
    isStringList(names) &&
    claims.message === undefined &&
    names.length <= MAX_CHANNELS &&
    names.every((n) => n.length <= 255);
  if (!valid) {
    ws.close(1008, 'Not Authorized');
    return;
  }
  subscribeChannels(ws, names);
}

function onMessage(ws, raw, isBinary) {
  if (isBinary) {
    ws.close(1003, 'Binary frames are not accepted');
    return;
  }
  let msg;
  try {
    msg = JSON.parse(raw.toString('utf8'));
  } catch {
    msg = null;
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.event !== 'string') {
    ws.send(frame('error', JSON.stringify({ error: 'Expected a JSON object with a string event' })));
    return;
  }
  if (msg.event === 'authenticate') authenticate(ws, msg.data);
  else if (msg.event === 'ping') ws.send(frame('pong'));
}

function onClose(ws) {
  sockets.delete(ws);
  for (const name of ws.channels) {
    const members = channels.get(name);
    if (members === undefined) continue;
    members.delete(ws);
    if (members.size === 0) channels.delete(name);
  }
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

/** Hand one encoded message to every socket of the named channels, each socket once. */
function deliver(names, payload) {
  let count = 0;
  const send = (ws) => {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(payload, { binary: false });
      count += 1;
    }
  };
  if (names.length === 1) {
    const members = channels.get(names[0]);
    if (members !== undefined) members.forEach(send);
  } else {
    const seen = new Set();
    for (const name of names) {
      const members = channels.get(name);
      if (members === undefined) continue;
      for (const ws of members) {
        if (!seen.has(ws)) {
          seen.add(ws);
          send(ws);
        }
      }
    }
  }
  deliveries += count;
  return count;
}

function broadcast(res, body) {
  let token;
  try {
    token = JSON.parse(body).token;
  } catch {
    return sendJson(res, 400, { error: 'Body is not JSON' });
  }
  if (typeof token !== 'string') return sendJson(res, 400, { error: 'Missing token' });
  let claims;
  try {
    claims = verify(token);
  } catch {
    return sendJson(res, 400, { error: 'Bad signature' });
  }
  const names = typeof claims.channel === 'string' ? [claims.channel] : claims.channels;
  const message = claims.message;
  if (
    typeof claims.exp !== 'number' ||
    !isStringList(names) ||
    message === null ||
    typeof message !== 'object' ||
    typeof message.event !== 'string'
  ) {
    return sendJson(res, 400, { error: 'Bad signature' });
  }
  const payload = Buffer.from(JSON.stringify(message), 'utf8');
  if (payload.length > MAX_MESSAGE_BYTES) return sendJson(res, 413, { error: 'Message too large' });
  return sendJson(res, 200, { message: 'Success', deliveries: deliver(names, payload) });
}

function onRequest(req, res) {
  const path = req.url.split('?', 1)[0];
  if (req.method === 'GET' && path === '/info.json') {
    return sendJson(res, 200, { stats: { deliveries, connected: sockets.size } });
  }
  if (req.method !== 'POST' || path !== '/broadcast') {
    return sendJson(res, 404, { error: 'Not found' });
  }
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      sendJson(res, 413, { error: 'Body too large' });
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (size <= MAX_BODY_BYTES) broadcast(res, Buffer.concat(chunks).toString('utf8'));
  });
  return undefined;
}

const server = http.createServer(onRequest);
server.keepAliveTimeout = 60_000;
const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  if (req.url.split('?', 1)[0] !== '/subscribe') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.channels = new Set();
    sockets.add(ws);
    ws.on('message', (raw, isBinary) => onMessage(ws, raw, isBinary));
    ws.on('close', () => onClose(ws));
    ws.on('error', () => ws.terminate());
  });
});

function shutdown() {
  for (const ws of sockets) ws.close(1012, 'Service restart');
  server.close();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

const port = Number(process.env.PORT || 8080);
const host = process.env.HOST || '127.0.0.1';
server.listen({ port, host, backlog: 511 }, () => {
  console.log(`reference server listening on http://${host}:${port}`);
});
