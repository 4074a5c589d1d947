#!/bin/sh
# The webhook's certificate without cert-manager: a CA for the injector alone and a serving
# certificate for its Service, the Secret ccr-injector-tls holding them, and the CA put into the
# MutatingWebhookConfiguration's caBundle. Run again before the certificate expires (DAYS, 365 by
# default): the CA is kept when its files are there, so the caBundle does not change, and the
# injector takes the new certificate from its mounted Secret without a restart.
#
#   sh k8s/webhook/manual-certs.sh [DIR]          # DIR default ./ccr-injector-certs (keep it private)
#   kubectl apply -n ccr-gateway -f k8s/webhook/injector.yaml
#   kubectl apply -f k8s/webhook/mutatingwebhook.yaml
#   sh k8s/webhook/manual-certs.sh DIR --apply     # Secret + caBundle (after the webhook exists)
#
# Needs openssl (1.1.1 or newer: -addext); --apply needs kubectl. NAMESPACE and SERVICE may be set
# in the environment (defaults ccr-gateway, ccr-injector): they must match mutatingwebhook.yaml.
set -eu

DIR=${1:-ccr-injector-certs}
APPLY=${2:-}
NAMESPACE=${NAMESPACE:-ccr-gateway}
SERVICE=${SERVICE:-ccr-injector}
DAYS=${DAYS:-365}
WEBHOOK=ccr-gateway-sidecar-injector
HOST="$SERVICE.$NAMESPACE.svc"

mkdir -p "$DIR"
umask 077
if [ ! -f "$DIR/ca.key" ] || [ ! -f "$DIR/ca.crt" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/ca.key"
  openssl req -x509 -new -key "$DIR/ca.key" -sha256 -days 1825 -subj "/CN=ccr-injector CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$DIR/ca.crt"
fi
openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/tls.key"
openssl req -new -key "$DIR/tls.key" -subj "/CN=$HOST" -out "$DIR/tls.csr"
printf '%s\n' \
  "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" \
  "subjectAltName=DNS:$HOST,DNS:$HOST.cluster.local" >"$DIR/tls.ext"
openssl x509 -req -in "$DIR/tls.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
  -days "$DAYS" -sha256 -extfile "$DIR/tls.ext" -out "$DIR/tls.crt"
openssl verify -CAfile "$DIR/ca.crt" "$DIR/tls.crt" >/dev/null
echo "certificate for $HOST in $DIR/tls.crt (key $DIR/tls.key), CA $DIR/ca.crt"

if [ "$APPLY" = "--apply" ]; then
  kubectl -n "$NAMESPACE" create secret generic ccr-injector-tls --type=kubernetes.io/tls \
    --from-file=tls.crt="$DIR/tls.crt" --from-file=tls.key="$DIR/tls.key" --from-file=ca.crt="$DIR/ca.crt" \
    --dry-run=client -o yaml | kubectl apply -f -
  CA_BUNDLE=$(base64 <"$DIR/ca.crt" | tr -d '\n')
  kubectl patch mutatingwebhookconfiguration "$WEBHOOK" --type=json -p "[
    {\"op\": \"add\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$CA_BUNDLE\"},
    {\"op\": \"add\", \"path\": \"/webhooks/1/clientConfig/caBundle\", \"value\": \"$CA_BUNDLE\"}]"
  echo "Secret $NAMESPACE/ccr-injector-tls and the caBundle of $WEBHOOK updated"
fi
