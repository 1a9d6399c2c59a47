#!/usr/bin/env node
// A gRPC client that knows no Sinkline proto: everything it sends and reads
// is described by the server's reflection service (grpc-reflection-js over
// @grpc/grpc-js). For each --target it lists the services, describes every
// method of each, calls grpc.health.v1.Health/Check for the server ("") and
// for every listed service with the descriptor obtained through reflection,
// and makes each --call given as Service/Method=JSON (request as JSON).
// Field names are the proto's own (snake_case), enums by name, as grpcurl
// takes them. Prints one JSON document on stdout.
//
//   node tests/tools/reflect.js --target=127.0.0.1:7000 \
//       '--call=sinkline.v1.Admin/ListBindings={}'
'use strict';

const grpc = require('@grpc/grpc-js');
const {Client: ReflectionClient} = require('grpc-reflection-js');

const TIMEOUT_MS = 10000;

function parseArgs(argv) {
  const out = {targets: []};
  for (const a of argv) {
    let m;
    if ((m = /^--target=(.+)$/.exec(a))) {
      out.targets.push({address: m[1], calls: []});
    } else if ((m = /^--call=([\w.]+)\/(\w+)=([\s\S]*)$/.exec(a))) {
      if (out.targets.length === 0) throw new Error('--call before --target');
      out.targets[out.targets.length - 1].calls.push(
          {service: m[1], method: m[2], request: JSON.parse(m[3])});
    } else {
      throw new Error(`unknown argument ${a}`);
    }
  }
  return out;
}

const toObjectOptions = {enums: String, longs: String, bytes: String,
                         defaults: true, arrays: true};

// Calls one unary method from its reflected protobufjs descriptor.
function callUnary(client, method, request) {
  method.resolve();
  const reqType = method.resolvedRequestType;
  const respType = method.resolvedResponseType;
  const service = method.parent.fullName.replace(/^\./, '');
  for (const key of Object.keys(request)) {
    if (!reqType.fields[key]) {
      return Promise.reject(new Error(`${reqType.fullName} has no field ${key}`));
    }
  }
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
        `/${service}/${method.name}`,
        (obj) => Buffer.from(reqType.encode(reqType.fromObject(obj)).finish()),
        (buf) => respType.toObject(respType.decode(buf), toObjectOptions),
        request, new grpc.Metadata(),
        {deadline: Date.now() + TIMEOUT_MS},
        (e, resp) => (e ? reject(e) : resolve(resp)));
  });
}

async function inspect(target) {
  const creds = grpc.credentials.createInsecure();
  const reflection = new ReflectionClient(target.address, creds);
  const client = new grpc.Client(target.address, creds);
  const result = {target: target.address, services: [], methods: {},
                  health: {}, calls: []};
  try {
    result.services = (await reflection.listServices()).sort();
    const roots = {};
    for (const name of result.services) {
      const root = await reflection.fileContainingSymbol(name);
      roots[name] = root;
      const svc = root.lookupService(name);
      result.methods[name] = Object.values(svc.methods).map((m) => {
        m.resolve();
        return {
          name: m.name,
          request: m.resolvedRequestType.fullName.replace(/^\./, ''),
          response: m.resolvedResponseType.fullName.replace(/^\./, ''),
          requestStream: !!m.requestStream,
          responseStream: !!m.responseStream,
        };
      }).sort((a, b) => a.name.localeCompare(b.name));
    }
    // Health, through the descriptor the server gave us.
    const healthName = 'grpc.health.v1.Health';
    if (!roots[healthName]) throw new Error(`${healthName} is not listed`);
    const check = roots[healthName].lookupService(healthName).methods.Check;
    // The server ("") and each of its own services (the health service
    // knows no status for itself or for reflection).
    for (const s of [''].concat(result.services.filter((n) => !n.startsWith('grpc.')))) {
      try {
        const r = await callUnary(client, check, {service: s});
        result.health[s] = r.status;
      } catch (e) {
        result.health[s] = `error: ${e.code} ${e.details || e.message}`;
      }
    }
    for (const c of target.calls) {
      const root = roots[c.service] || await reflection.fileContainingSymbol(c.service);
      const method = root.lookupService(c.service).methods[c.method];
      if (!method) throw new Error(`${c.service} has no method ${c.method}`);
      const call = {method: `${c.service}/${c.method}`, request: c.request};
      try {
        call.response = await callUnary(client, method, c.request);
      } catch (e) {
        call.error = {code: e.code, details: e.details || e.message};
      }
      result.calls.push(call);
    }
  } finally {
    client.close();
    reflection.grpcClient.close();
  }
  return result;
}

async function main() {
  const {targets} = parseArgs(process.argv.slice(2));
  const out = [];
  for (const t of targets) out.push(await inspect(t));
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
}

main().catch((e) => {
  process.stderr.write(`reflect: ${e.stack || e}\n`);
  process.exit(1);
});
