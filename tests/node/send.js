#!/usr/bin/env node
// Send one message through sendguard with the official `twilio` npm package, and print the
// outcome as one line of JSON. Used by tests/e2e/test_sdk_node.py; also a runnable example of the
// Node recipes in docs/sdk-recipes.md.
//
//   node send.js --proxy http://localhost:8080 --to +15558675310 --body "hi" \
//                [--from +15005550006] [--idempotency-key order-42] \
//                [--mode base-url|http-client] [--region au1] [--edge sydney]
//
// Credentials come from TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (or --account / --token; the
// environment keeps the token out of `ps`). Every option has an env fallback:
// SENDGUARD_URL, TWILIO_TO, TWILIO_FROM, TWILIO_BODY, IDEMPOTENCY_KEY, SENDGUARD_MODE.
//
// Output (stdout, one line):
//   success:        {"ok":true,"sid":"SM…","status":"queued","decision":"forwarded","replayed":false}
//   REST error:     {"ok":false,"error":"RestException","status":422,"code":79002,…}  exit 2
//   anything else:  {"ok":false,"error":"<name>","message":"…"}                       exit 1
"use strict";

const { AsyncLocalStorage } = require("node:async_hooks");
const { parseArgs } = require("node:util");
const twilio = require("twilio");

// The Idempotency-Key of the send being made. twilio-node has no per-call headers, so the key
// travels in async context from the call site to the HTTP client (safe under concurrency).
const idempotencyKey = new AsyncLocalStorage();

// Recipe B (docs/sdk-recipes.md): an HTTP client that sends every request to sendguard and
// names the Twilio host it was meant for. Region/edge rewriting happens before this sees the
// URL, so it is immune to TWILIO_REGION / TWILIO_EDGE. Without `proxyUrl` it only adds the key
// (recipe A: the base URL is set on the domain instead).
class SendguardRequestClient extends twilio.RequestClient {
  constructor({ proxyUrl, ...options } = {}) {
    super(options); // timeout / autoRetry / keepAlive go here: the client-level ones are ignored
    this.proxy = proxyUrl ? new URL(proxyUrl) : null;
  }

  request(opts) {
    const headers = { ...opts.headers };
    const key = idempotencyKey.getStore();
    if (key !== undefined && String(opts.method).toLowerCase() === "post") {
      headers["Idempotency-Key"] = key;
    }
    let uri = opts.uri;
    if (this.proxy) {
      const target = new URL(uri);
      headers["X-Sendguard-Upstream-Host"] = target.host;
      uri = this.proxy.origin + target.pathname + target.search;
    }
    return super.request({ ...opts, uri, headers });
  }
}

function options() {
  const { values } = parseArgs({
    options: {
      proxy: { type: "string", default: process.env.SENDGUARD_URL },
      account: { type: "string", default: process.env.TWILIO_ACCOUNT_SID },
      token: { type: "string", default: process.env.TWILIO_AUTH_TOKEN },
      to: { type: "string", default: process.env.TWILIO_TO },
      from: { type: "string", default: process.env.TWILIO_FROM || "+15005550006" },
      body: { type: "string", default: process.env.TWILIO_BODY },
      "idempotency-key": { type: "string", default: process.env.IDEMPOTENCY_KEY },
      mode: { type: "string", default: process.env.SENDGUARD_MODE || "base-url" },
      region: { type: "string" },
      edge: { type: "string" },
      // Where the SDK believes api.twilio.com is. Only for tests, where a local fake stands in
      // for Twilio and must be named in X-Sendguard-Upstream-Host (http-client mode).
      "api-base-url": { type: "string" },
    },
  });
  for (const name of ["proxy", "account", "token", "to", "body"]) {
    if (!values[name]) throw new UsageError(`missing --${name} (or its environment variable)`);
  }
  if (!["base-url", "http-client"].includes(values.mode)) {
    throw new UsageError(`--mode must be base-url or http-client, not ${values.mode}`);
  }
  return values;
}

class UsageError extends Error {
  get name() {
    return "UsageError";
  }
}

function makeClient(opts) {
  const clientOptions = { region: opts.region, edge: opts.edge };
  if (opts.mode === "http-client") {
    clientOptions.httpClient = new SendguardRequestClient({ proxyUrl: opts.proxy });
  } else {
    clientOptions.httpClient = new SendguardRequestClient();
  }
  const client = twilio(opts.account, opts.token, clientOptions);
  if (opts.mode === "base-url") {
    // Recipe A: per-domain base URL (api.twilio.com serves Messages). Breaks with region/edge.
    client.api.baseUrl = opts.proxy;
  } else if (opts["api-base-url"]) {
    client.api.baseUrl = opts["api-base-url"];
  }
  return client;
}

function sendguardHeaders(client) {
  const headers = client.httpClient.lastResponse?.headers || {};
  return {
    decision: headers["x-sendguard-decision"] ?? null,
    replayed: headers["idempotent-replayed"] === "true",
  };
}

async function main() {
  const opts = options();
  const client = makeClient(opts);
  const params = { to: opts.to, from: opts.from, body: opts.body };
  const send = () => client.messages.create(params);
  try {
    const key = opts["idempotency-key"];
    const message = await (key === undefined ? send() : idempotencyKey.run(key, send));
    return { ok: true, sid: message.sid, status: message.status, ...sendguardHeaders(client) };
  } catch (err) {
    if (!(err instanceof twilio.RestException)) throw err;
    process.exitCode = 2;
    return {
      ok: false,
      error: "RestException",
      status: err.status,
      code: err.code,
      message: err.message,
      moreInfo: err.moreInfo,
      ...sendguardHeaders(client),
    };
  }
}

main().then(
  (result) => console.log(JSON.stringify(result)),
  (err) => {
    process.exitCode = 1;
    console.log(JSON.stringify({ ok: false, error: err.name, message: err.message }));
  },
);
