#!/usr/bin/env bash
# Create livemod's topics, each with the partition count the worker expects (settings kafka.partitions),
# and fail when a topic that already exists has another count.
#
# Reads the worker's own LIVEMOD_* settings (the same ConfigMap / compose environment), so the topic
# names, partitions and replication factor cannot drift from what the workers use. Runs in the official
# apache/kafka image (kafka-topics.sh); used by the Kubernetes Job (k8s/topics-job.yaml, through a
# ConfigMap that kustomize generates from this file) and by the compose stack's kafka-init service.
#
# Why the counts matter: the rule-state table's changelog is co-partitioned with frame-refs (a stream's
# state lives in the partition of its references); a topic the broker auto-creates gets the broker's
# default count and breaks that. Partition counts can be raised later but never lowered, and raising
# frame-refs moves streams to other partitions away from their state: pick the count up front.
set -euo pipefail

KAFKA_BIN=${KAFKA_BIN:-/opt/kafka/bin}
servers=${LIVEMOD_KAFKA__BOOTSTRAP_SERVERS:-kafka://127.0.0.1:9092}
servers=${servers//kafka:\/\//}   # Faust's form kafka://h1:9092;h2:9092 -> h1:9092,h2:9092
servers=${servers//;/,}
partitions=${LIVEMOD_KAFKA__PARTITIONS:-8}
rf=${LIVEMOD_KAFKA__REPLICATION_FACTOR:-1}
app_id=${LIVEMOD_KAFKA__APP_ID:-livemod}
# acks=all only protects a write when at least two replicas must have it; with one replica it must be 1.
min_isr=${TOPIC_MIN_INSYNC_REPLICAS:-$(( rf >= 3 ? 2 : 1 ))}
retention_ms=${TOPIC_RETENTION_MS:-604800000}   # 7 days for the event topics; the changelog is compacted

cfg=$(mktemp)
chmod 600 "$cfg"
trap 'rm -f "$cfg"' EXIT
protocol=${LIVEMOD_KAFKA__SECURITY_PROTOCOL:-PLAINTEXT}
echo "security.protocol=$protocol" >>"$cfg"
if [[ $protocol == SASL_* ]]; then
  mechanism=${LIVEMOD_KAFKA__SASL_MECHANISM:-PLAIN}
  case $mechanism in
    PLAIN) module=org.apache.kafka.common.security.plain.PlainLoginModule ;;
    SCRAM-SHA-256 | SCRAM-SHA-512) module=org.apache.kafka.common.security.scram.ScramLoginModule ;;
    *) echo "create-topics: unsupported SASL mechanism $mechanism" >&2; exit 2 ;;
  esac
  {
    echo "sasl.mechanism=$mechanism"
    echo "sasl.jaas.config=$module required username=\"${LIVEMOD_KAFKA__SASL_USERNAME:?}\" password=\"${LIVEMOD_KAFKA__SASL_PASSWORD:?}\";"
  } >>"$cfg"
fi
if [[ -n ${LIVEMOD_KAFKA__SSL_CAFILE:-} ]]; then
  printf 'ssl.truststore.type=PEM\nssl.truststore.location=%s\n' "$LIVEMOD_KAFKA__SSL_CAFILE" >>"$cfg"
fi

topics() { "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$servers" --command-config "$cfg" "$@"; }

failed=0
ensure() {  # ensure NAME PARTITIONS [--config k=v ...]
  local name=$1 want=$2
  shift 2
  topics --create --if-not-exists --topic "$name" --partitions "$want" --replication-factor "$rf" \
    --config "min.insync.replicas=$min_isr" "$@" >/dev/null
  local got
  got=$(topics --describe --topic "$name" | grep -o 'PartitionCount: *[0-9]*' | head -n 1 | grep -o '[0-9]*$' || true)
  if [[ $got == "$want" ]]; then
    echo "create-topics: $name: $got partitions, replication factor $rf"
  else
    echo "create-topics: $name has ${got:-no} partitions, livemod needs $want (kafka.partitions)" >&2
    failed=1
  fi
}

for name in "${LIVEMOD_KAFKA__FRAME_REFS_TOPIC:-frame-refs}" "${LIVEMOD_KAFKA__ALERTS_TOPIC:-alerts}" \
            "${LIVEMOD_KAFKA__DLQ_TOPIC:-frame-refs-dlq}" "${LIVEMOD_KAFKA__REVIEWS_TOPIC:-reviews}" \
            "${LIVEMOD_KAFKA__CALLBACKS_DLQ_TOPIC:-alert-callbacks-dlq}"; do
  ensure "$name" "$partitions" --config "retention.ms=$retention_ms"
done
# Faust's table changelog (table "stream-state"): compacted, co-partitioned with frame-refs.
ensure "$app_id-stream-state-changelog" "$partitions" --config cleanup.policy=compact
# Faust's leader-election topic, one partition; created here so workers need no CREATE permission.
ensure "$app_id-__assignor-__leader" 1
exit "$failed"
