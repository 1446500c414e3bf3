#!/usr/bin/env bash
# Makes a throwaway PKI for trying TLS and mutual TLS (and for tests), with openssl:
#
#   DIR/cluster-ca.{crt,key}   the cluster's CA: signs coordinators, workers and the registry
#   DIR/worker.{crt,key}       a worker: server to coordinators (DNS hch-worker), client of the
#                              registry service
#   DIR/coordinator.{crt,key}  a coordinator: server to its clients and its peer replicas
#                              (DNS hch-coordinator), client to its workers
#   DIR/registry.{crt,key}     the registry service (DNS hch-registry), beside the trainer
#   DIR/client-ca.{crt,key}    the CA of the users (kept apart: its certificates open no worker)
#   DIR/client.{crt,key}       a user's client certificate
#
# Each server certificate also names its Kubernetes Service in namespace $HCH_NAMESPACE (hch by
# default): hch-worker.hch.svc and so on, as deploy/ dials them.
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
ns=${HCH_NAMESPACE:-hch}
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
names() { # service
    echo "DNS:$1,DNS:$1.$ns.svc,DNS:$1.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
}
leaf worker cluster-ca hch-worker serverAuth,clientAuth "$(names hch-worker)"
leaf coordinator cluster-ca hch-coordinator serverAuth,clientAuth "$(names hch-coordinator)"
leaf registry cluster-ca hch-registry serverAuth "$(names hch-registry)"
leaf client client-ca hch-client clientAuth ""
rm -f ./*.srl
chmod 644 ./*.crt
echo "dev-certs: CA, worker, coordinator, registry and client certificates in $(pwd), valid $days days"
