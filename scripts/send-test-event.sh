#!/usr/bin/env bash
# Posts one Stripe-signed test event to the running shim (t=<unix>,v1=HMAC-SHA256(secret, "t.body")).
#   scripts/send-test-event.sh [EVENT_ID]
# The same EVENT_ID sent twice is stored once. Needs only openssl and curl.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
url=${SHIM_URL:-http://${HOST:-127.0.0.1}:${PORT:-8000}}
secret=${STRIPE_WEBHOOK_SECRET:-$(cat "${RUN_STATE_DIR:-$root/.local}/webhook-secret")}
secret=${secret%%,*}
event_id=${1:-evt_test_local_1}
body=$(printf '{"id":"%s","object":"event","type":"test.ping","livemode":false,"created":%s,"data":{"object":{"object":"test","id":"obj_1"}}}' "$event_id" "$(date +%s)")
t=$(date +%s)
sig=$(printf '%s.%s' "$t" "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
curl -sS -X POST "$url/webhooks/stripe" \
  -H 'Content-Type: application/json' \
  -H "Stripe-Signature: t=$t,v1=$sig" \
  --data-binary "$body"
echo
