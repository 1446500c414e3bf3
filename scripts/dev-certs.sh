#!/usr/bin/env bash
# Makes a throwaway PKI for trying TLS and mutual TLS (and for tests), with openssl:
#
#   DIR/cluster-ca.{crt,key}   the cluster's CA: signs coordinators, workers and the trainer
#   DIR/worker.{crt,key}       a worker (server): DNS hch-worker, localhost, IP 127.0.0.1
#   DIR/coordinator.{crt,key}  a coordinator: server to its clients, client to its workers
#   DIR/client-ca.{crt,key}    the CA of the users (kept apart: its certificates open no worker)
#   DIR/client.{crt,key}       a user's client certificate
#
# Usage: scripts/dev-certs.sh DIR [DAYS]    (DAYS: validity, 30 by default)
#
# Then, for example:
#   hch worker --oracle --tls-cert DIR/worker.crt --tls-key DIR/worker.key \
#       --tls-client-ca DIR/cluster-ca.crt
#   hch coordinator --workers 127.0.0.1:50051 --tls-cert DIR/coordinator.crt \
#       --tls-key DIR/coordinator.key --worker-tls-ca DIR/cluster-ca.crt \
#       --worker-tls-cert DIR/coordinator.crt --worker-tls-key DIR/coordinator.key \
#       --worker-tls-name hch-worker
#   hch ask --addr https://127.0.0.1:50050 --tls-ca DIR/cluster-ca.crt --domain wildcard ...
#
# For production use your own CA (cert-manager on Kubernetes): these keys are unencrypted.
set -euo pipefail

dir=${1:?usage: scripts/dev-certs.sh DIR [DAYS]}
days=${2:-30}
mkdir -p "$dir"
cd "$dir"
umask 077

ca() { # name subject
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
        -keyout "$1.key" -out "$1.crt" -days "$days" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

leaf() { # name ca subject extendedKeyUsage subjectAltName
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
        -keyout "$1.key" -out "$1.csr" -subj "/CN=$3" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' \
        "$4" "${5:+subjectAltName=$5}" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -sha256 \
        -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

ca cluster-ca "hch cluster CA"
ca client-ca "hch client CA"
leaf worker cluster-ca hch-worker serverAuth "DNS:hch-worker,DNS:localhost,IP:127.0.0.1"
leaf coordinator cluster-ca hch-coordinator serverAuth,clientAuth \
    "DNS:hch-coordinator,DNS:localhost,IP:127.0.0.1"
leaf client client-ca hch-client clientAuth ""
rm -f ./*.srl
chmod 644 ./*.crt
echo "dev-certs: CA, worker, coordinator and client certificates in $(pwd), valid $days days"
