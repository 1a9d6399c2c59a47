#!/usr/bin/env bash
# Builds Sinkline and starts the whole stack on this machine: the example
# sinks (recipient-policy, dkim-sign, stamp, archive), the broker with a local
# spool queue, and the SMTP edge. Runs in the foreground until interrupted,
# then stops everything it started.
#
# Environment:
#   SINKLINE_SMTP_PORT  SMTP port of the edge (default 2525)
#   SINKLINE_HOME       working directory: config, spool, queue, logs
#                       (default ./.sinkline in the checkout)
#   SINKLINE_CONFIG     bindings file to use instead of the generated one
#   SINKLINE_BIN_DIR    use binaries from here and skip the build
#   SINKLINE_TLS_CERT, SINKLINE_TLS_KEY
#                       PEM certificate and key for STARTTLS (default: a
#                       self-signed pair generated once into $SINKLINE_HOME/tls)
#   SINKLINE_AUTH_FILE  user:crypt-hash lines for AUTH over TLS (default: one
#                       user `submit` with a random password, made once into
#                       $SINKLINE_HOME/auth/); make a hash with
#                       `openssl passwd -6`
#   SINKLINE_ACCEPTED_DOMAINS
#                       recipient domains taken (default example.test)
#   SINKLINE_TRUSTED_NETWORKS
#                       CIDR blocks that may relay without AUTH (default none:
#                       mail for other domains needs AUTH)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
smtp_port=${SINKLINE_SMTP_PORT:-2525}
home=${SINKLINE_HOME:-$root/.sinkline}

if [[ -z "${SINKLINE_BIN_DIR:-}" ]]; then
  "$root/scripts/install-deps.sh"
  (cd "$root" && cmake --preset dev >/dev/null && cmake --build --preset dev)
  bin="$root/build/dev/bin"
else
  bin=$SINKLINE_BIN_DIR
fi

mkdir -p "$home"/{run,log,spool,queue,archive,dkim}
home=$(cd "$home" && pwd)
run="$home/run"
rm -f "$run"/*.port "$run"/*.pid  # the sinkline command reads the ports

# STARTTLS: the given certificate, or a self-signed one made once.
tls_cert=${SINKLINE_TLS_CERT:-}
tls_key=${SINKLINE_TLS_KEY:-}
if [[ -z "$tls_cert" ]]; then
  tls_cert="$home/tls/cert.pem"
  tls_key="$home/tls/key.pem"
  if [[ ! -s "$tls_cert" || ! -s "$tls_key" ]]; then
    mkdir -p "$home/tls"
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 825 \
      -subj "/CN=mx.example.test" \
      -addext "subjectAltName=DNS:mx.example.test,DNS:localhost,IP:127.0.0.1" \
      -keyout "$tls_key" -out "$tls_cert" 2>"$home/log/openssl.log") || {
      echo "sinkline: could not generate a TLS certificate:" >&2
      cat "$home/log/openssl.log" >&2
      exit 1
    }
  fi
fi
edge_policy=(--tls-cert="$tls_cert" --tls-key="$tls_key"
  --accepted-domains="${SINKLINE_ACCEPTED_DOMAINS:-example.test}"
  --trusted-networks="${SINKLINE_TRUSTED_NETWORKS:-}")
# AUTH over TLS: the given credentials, or one user made once.
auth_file=${SINKLINE_AUTH_FILE:-}
if [[ -z "$auth_file" ]]; then
  auth_file="$home/auth/users"
  if [[ ! -s "$auth_file" ]]; then
    mkdir -p "$home/auth"
    (umask 077 &&
      openssl rand -hex 12 >"$home/auth/submit.password" &&
      echo "submit:$(openssl passwd -6 -stdin <"$home/auth/submit.password")" \
        >"$auth_file")
  fi
fi
edge_policy+=(--auth-file="$auth_file")

pids=()
stop_all() {
  trap - INT TERM EXIT
  local pid
  # Stop in the reverse order of start: edge first, then the broker, sinks
  # last.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -f "$run"/*.pid
  echo "sinkline: stopped"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME PORTFILE CMD...: starts a process, logs to $home/log/NAME.log,
# waits until it wrote its port file.
start() {
  local name=$1 portfile=$2
  shift 2
  "$@" >"$home/log/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  echo "$pid" >"$run/$name.pid"
  for _ in $(seq 200); do
    [[ -s "$portfile" ]] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "sinkline: $name exited during start; its log:" >&2
      cat "$home/log/$name.log" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "sinkline: $name did not start in 10s; see $home/log/$name.log" >&2
  exit 1
}

# recipient-policy: the accepted recipients, made once; edit the file and the
# running sink reads it again.
recipients="$home/recipients"
if [[ ! -s "$recipients" ]]; then
  cat >"$recipients" <<'LIST'
# Recipients the local stack accepts (made by scripts/start.sh; edit freely,
# the recipient-policy sink reads it again): an address, or @domain for all.
postmaster@example.test
someone@example.test
alice@example.test
bob@example.test
LIST
fi

# dkim-sign: an RSA and an Ed25519 key for example.test, made once, and the
# DNS records that publish them.
dkim="$home/dkim"
if [[ ! -s "$dkim/keys.yaml" ]]; then
  (umask 077 &&
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
      -out "$dkim/example.test.rsa.pem" 2>/dev/null &&
    openssl genpkey -algorithm ed25519 -out "$dkim/example.test.ed.pem" \
      2>/dev/null)
  {
    echo "rsa._domainkey.example.test. TXT \"v=DKIM1; k=rsa; p=$(openssl pkey \
      -in "$dkim/example.test.rsa.pem" -pubout -outform DER 2>/dev/null |
      base64 -w0)\""
    echo "ed._domainkey.example.test. TXT \"v=DKIM1; k=ed25519; p=$(openssl \
      pkey -in "$dkim/example.test.ed.pem" -pubout -outform DER 2>/dev/null |
      tail -c 32 | base64 -w0)\""
  } >"$dkim/dns.txt"
  cat >"$dkim/keys.yaml" <<'KEYS'
# Made by scripts/start.sh; the DNS records are in dns.txt beside it.
domains:
  example.test:
    - selector: rsa
      algorithm: rsa-sha256
      key: example.test.rsa.pem
    - selector: ed
      algorithm: ed25519-sha256
      key: example.test.ed.pem
KEYS
fi

start recipient-policy "$run/recipient-policy.port" \
  "$bin/sinkline-sink-recipient-policy" --listen=127.0.0.1:0 \
  --port-file="$run/recipient-policy.port" --recipients="$recipients"
start dkim-sign "$run/dkim-sign.port" "$bin/sinkline-sink-dkim-sign" \
  --listen=127.0.0.1:0 --port-file="$run/dkim-sign.port" \
  --keys="$dkim/keys.yaml"
start stamp "$run/stamp.port" "$bin/sinkline-sink-stamp" \
  --listen=127.0.0.1:0 --port-file="$run/stamp.port" --name=stamp
start archive "$run/archive.port" "$bin/sinkline-sink-archive" \
  --listen=127.0.0.1:0 --port-file="$run/archive.port" \
  --archive-dir="$home/archive"
policy_port=$(cat "$run/recipient-policy.port")
dkim_port=$(cat "$run/dkim-sign.port")
stamp_port=$(cat "$run/stamp.port")
archive_port=$(cat "$run/archive.port")

# recipient-policy looks at local recipients only: relayed mail (AUTH or a
# trusted network) goes to other domains.
accepted=${SINKLINE_ACCEPTED_DOMAINS:-example.test}
local_rule="rcpt to=$(echo "$accepted" | sed 's/[^,][^,]*/*@&/g')"

config=${SINKLINE_CONFIG:-$run/bindings.yaml}
if [[ -z "${SINKLINE_CONFIG:-}" ]]; then
  cat >"$config" <<YAML
# Generated by scripts/start.sh; set SINKLINE_CONFIG to use your own file.
sinks:
  - name: recipient-policy
    target: 127.0.0.1:$policy_port
  - name: dkim-sign
    target: 127.0.0.1:$dkim_port
  - name: stamp
    target: 127.0.0.1:$stamp_port
  - name: archive
    target: 127.0.0.1:$archive_port
bindings:
  # Known local recipients only ($recipients); others get 550 5.1.1.
  - name: recipients
    sink: recipient-policy
    event: RCPT
    rule: "$local_rule"
    priority: 10000
    deadline_ms: 2000
    failure_policy: tempfail
  # Before COMMIT: the signatures are in the message the client's 250 covers.
  - name: dkim
    sink: dkim-sign
    event: EOD
    priority: 20000
    deadline_ms: 5000
    failure_policy: continue
    content_access: read-write
  # After COMMIT (priority > 24575): the client already has its 250, and the
  # message still waits for these sinks before it goes to the queue.
  - name: stamp-eod
    sink: stamp
    event: EOD
    priority: 30000
    deadline_ms: 5000
    failure_policy: continue
    content_access: read-write
  # Last: the archived copy is the queued message.
  - name: archive-eod
    sink: archive
    event: EOD
    priority: 31000
    deadline_ms: 10000
    failure_policy: continue
    content_access: read
YAML
fi

start broker "$run/broker.port" "$bin/sinkline-broker" \
  --listen=127.0.0.1:0 --port-file="$run/broker.port" --config="$config" \
  --spool-dir="$home/spool" --queue-dir="$home/queue" --admin-allow-loopback \
  --session-allow-loopback
broker_port=$(cat "$run/broker.port")

start edge "$run/edge.port" "$bin/sinkline-edge" \
  --listen="127.0.0.1:$smtp_port" --port-file="$run/edge.port" \
  --broker="127.0.0.1:$broker_port" --hostname=mx.example.test \
  --admin-listen=127.0.0.1:0 --admin-port-file="$run/edge-admin.port" \
  --admin-allow-loopback \
  "${edge_policy[@]}"
edge_port=$(cat "$run/edge.port")
for _ in $(seq 100); do [[ -s "$run/edge-admin.port" ]] && break; sleep 0.05; done
edge_admin_port=$(cat "$run/edge-admin.port" 2>/dev/null || echo "?")

cat <<MSG
sinkline: up
  SMTP      127.0.0.1:$edge_port   (try: swaks --server 127.0.0.1:$edge_port --tls --to someone@example.test)
  TLS       $tls_cert
  domains   ${SINKLINE_ACCEPTED_DOMAINS:-example.test} (others need AUTH or a trusted network)
  AUTH      $auth_file (over TLS; the default user is submit, password in $home/auth/submit.password)
  broker    127.0.0.1:$broker_port (gRPC; grpcurl -plaintext 127.0.0.1:$broker_port list)
  edge admin 127.0.0.1:$edge_admin_port (gRPC EdgeAdmin)
  operator  $bin/sinkline queue   (finds these ports in $run; sinkline --help)
  sinks     recipient-policy 127.0.0.1:$policy_port ($recipients)
            dkim-sign 127.0.0.1:$dkim_port (DNS records: $dkim/dns.txt)
            stamp 127.0.0.1:$stamp_port, archive 127.0.0.1:$archive_port
  queue     $home/queue/new
  archive   $home/archive
  logs      $home/log
Press Ctrl-C to stop.
MSG

# Stay in the foreground; if any part dies, stop the others.
set +e
wait -n "${pids[@]}"
echo "sinkline: a process exited; stopping the stack" >&2
exit 1
