#!/bin/sh
# make-certs.sh OUT_DIR: the TLS files of docker-compose.secure.yml, made once.
#
#   OUT_DIR/ca/          ca.pem, ca-key.pem     the stack's own CA (only `certs` mounts it)
#   OUT_DIR/kafka/       ca.pem, broker.pem, broker-keystore.pem
#                        (the key store: PKCS#8 key, then the chain; ssl.keystore.type=PEM)
#   OUT_DIR/services/    ca.pem, metrics.pem, metrics-key.pem  (HTTPS of /metrics, /healthz)
#   OUT_DIR/prometheus/  ca.pem
#
# Each subdirectory is meant to be its own volume, mounted only where it is needed, so the
# CA key never leaves `certs` and the services never see the broker's key.
#
# Idempotent: what exists is kept. A certificate is issued again only when it or its key
# is missing, it does not verify against the CA (the CA was made anew), its key is not its
# own, or it expires within RENEW_DAYS. Keys are P-256, PKCS#8, unencrypted (Kafka's PEM key
# store and Python's ssl read them without a password): the CA key 0600, the others 0640,
# so the group the caller runs with can read them (compose runs this as 1000:10001, the
# kafka image's user and the services' group). Certificates are 0644.
#
# Settings (environment): BROKER_SANS, METRICS_SANS (subjectAltName lists), CA_DAYS,
# LEAF_DAYS, RENEW_DAYS. Needs a POSIX sh and openssl (1.1.1 or later).
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out=$1
BROKER_SANS=${BROKER_SANS:-DNS:kafka,DNS:localhost,IP:127.0.0.1}
# Prometheus checks each job's server_name (deploy/prometheus/prometheus-secure.yml); the
# image healthchecks connect to localhost.
METRICS_SANS=${METRICS_SANS:-DNS:producer,DNS:processor,DNS:audit,DNS:bridge,DNS:sink,DNS:localhost,IP:127.0.0.1}
CA_DAYS=${CA_DAYS:-3650}
LEAF_DAYS=${LEAF_DAYS:-825}
RENEW_DAYS=${RENEW_DAYS:-30}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A config of our own, so the system's openssl.cnf adds no extensions of its own.
cat > "$work/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF

# install_file TMP DEST MODE: put a finished file in place (a rename: never half-written).
install_file() {
    chmod "$3" "$1"
    mv -f "$1" "$2"
}

new_key() {
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1")
}

# same_key KEY CERT: the key is the certificate's.
same_key() {
    [ "$(openssl pkey -in "$1" -pubout 2>/dev/null)" = \
        "$(openssl x509 -in "$2" -noout -pubkey 2>/dev/null)" ]
}

# current CERT KEY: kept as it is (see the header).
current() {
    [ -s "$1" ] && [ -s "$2" ] \
        && openssl verify -CAfile "$ca" "$1" >/dev/null 2>&1 \
        && openssl x509 -in "$1" -noout -checkend $((RENEW_DAYS * 86400)) >/dev/null \
        && same_key "$2" "$1"
}

# issue NAME SANS KEY_OUT CERT_OUT: a server certificate for SANS, signed by the CA.
issue() {
    new_key "$3"
    openssl req -new -config "$work/openssl.cnf" -key "$3" \
        -subj "/O=Sensorstream compose/CN=$1" -out "$work/$1.csr"
    cat > "$work/$1.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    # OpenSSL 3 reports a good signature on stderr: show its output only if it failed.
    if ! openssl x509 -req -in "$work/$1.csr" -CA "$ca" -CAkey "$ca_key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$LEAF_DAYS" -sha256 \
        -extfile "$work/$1.ext" -out "$4" 2>"$work/x509.log"; then
        cat "$work/x509.log" >&2
        exit 1
    fi
}

mkdir -p "$out/ca" "$out/kafka" "$out/services" "$out/prometheus"
ca="$out/ca/ca.pem"
ca_key="$out/ca/ca-key.pem"

if [ -s "$ca" ] && [ -s "$ca_key" ] && same_key "$ca_key" "$ca"; then
    echo "make-certs: keeping the CA $ca"
else
    new_key "$work/ca-key.pem"
    openssl req -x509 -new -config "$work/openssl.cnf" -extensions ca \
        -key "$work/ca-key.pem" -subj "/O=Sensorstream compose/CN=Sensorstream compose CA" \
        -days "$CA_DAYS" -sha256 -out "$work/ca.pem"
    install_file "$work/ca-key.pem" "$ca_key" 0600
    install_file "$work/ca.pem" "$ca" 0644
    echo "make-certs: made the CA $ca"
fi

# Every volume gets the CA, so every mount is self-contained.
for dir in kafka services prometheus; do
    if ! cmp -s "$ca" "$out/$dir/ca.pem"; then
        cp "$ca" "$work/ca-copy.pem"
        install_file "$work/ca-copy.pem" "$out/$dir/ca.pem" 0644
    fi
done

broker="$out/kafka/broker.pem"
keystore="$out/kafka/broker-keystore.pem"
if current "$broker" "$keystore"; then
    echo "make-certs: keeping the broker certificate $broker"
else
    issue kafka "$BROKER_SANS" "$work/broker-key.pem" "$work/broker.pem"
    # Key first, then the chain ending with the CA (what Kafka's PEM key store reads).
    (umask 077 && cat "$work/broker-key.pem" "$work/broker.pem" "$ca" > "$work/keystore.pem")
    install_file "$work/keystore.pem" "$keystore" 0640
    install_file "$work/broker.pem" "$broker" 0644
    echo "make-certs: issued the broker certificate $broker for $BROKER_SANS"
fi

metrics="$out/services/metrics.pem"
metrics_key="$out/services/metrics-key.pem"
if current "$metrics" "$metrics_key"; then
    echo "make-certs: keeping the metrics certificate $metrics"
else
    issue metrics "$METRICS_SANS" "$work/metrics-key.pem" "$work/metrics.pem"
    install_file "$work/metrics-key.pem" "$metrics_key" 0640
    install_file "$work/metrics.pem" "$metrics" 0644
    echo "make-certs: issued the metrics certificate $metrics for $METRICS_SANS"
fi
