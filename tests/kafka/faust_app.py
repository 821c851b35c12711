"""A bare faust-streaming app for the Kafka lane: no livemod code, just Faust on Apache Kafka.

Its agent counts each key in a table and forwards every event, tagged with the worker's name and the
source partition/offset, to an output topic. One process per worker, configured by environment
variables (LMK_*), so a test can SIGKILL it: `python -m tests.kafka.faust_app worker --without-web -l info`.
"""

from __future__ import annotations

import os

import faust

env = os.environ
WORKER = env.get("LMK_WORKER", "w")
PARTITIONS = int(env.get("LMK_PARTITIONS", "4"))

app = faust.App(
    env.get("LMK_APP_ID", "lmk-faust"),
    broker=env.get("LMK_BROKER", "kafka://127.0.0.1:9092"),
    processing_guarantee=env.get("LMK_GUARANTEE", "at_least_once"),
    broker_session_timeout=float(env.get("LMK_SESSION_S", "10")),
    broker_heartbeat_interval=float(env.get("LMK_HEARTBEAT_S", "3")),
    broker_rebalance_timeout=float(env.get("LMK_REBALANCE_S", "20")),
    consumer_group_instance_id=env.get("LMK_INSTANCE") or None,
    topic_partitions=PARTITIONS,
    topic_replication_factor=int(env.get("LMK_RF", "1")),
    store="memory://",
    web_enabled=False,
    broker_commit_interval=float(env.get("LMK_COMMIT_S", "1")),
    table_standby_replicas=int(env.get("LMK_STANDBY", "1")),
)
# Under exactly_once Faust puts each output into the transaction of the *output's* partition number
# (faust/transport/consumer.py TransactionManager.send), and commits that transaction with the
# offsets of the source partition of that number: outputs are exactly-once only when they go to the
# same partition number as their input. LMK_COPARTITION=0 sends by key hash instead, to show the gap.
COPARTITION = env.get("LMK_COPARTITION", "1") == "1"
# And Faust finds an output's transaction only for topics its consumer has metadata and a topic group
# for, i.e. topics it consumes: sends to any other topic go through the plain producer, outside every
# transaction (visible at once, sent again after a crash). LMK_SUBSCRIBE_SINK=1 consumes the sink too.
SUBSCRIBE_SINK = env.get("LMK_SUBSCRIBE_SINK", "0") == "1"
source = app.topic(env.get("LMK_SRC", "lmk-src"), key_type=bytes, value_type=bytes, key_serializer="raw",
                   value_serializer="raw", partitions=PARTITIONS)
sink = app.topic(env.get("LMK_DST", "lmk-dst"), key_serializer="raw", value_serializer="json", partitions=PARTITIONS)
counts = app.Table("counts", default=int, partitions=PARTITIONS, key_type=str, value_type=int)


@app.agent(source)
async def relay(stream: faust.StreamT) -> None:
    async for event in stream.events():
        key = event.key.decode()
        counts[key] += 1
        await sink.send(key=event.key, partition=event.message.partition if COPARTITION else None, value={
            "worker": WORKER, "partition": event.message.partition, "offset": event.message.offset,
            "value": event.value.decode(), "count": counts[key]})


if SUBSCRIBE_SINK:
    @app.agent(sink)
    async def drain(stream: faust.StreamT) -> None:
        async for _ in stream.events():
            pass


if __name__ == "__main__":
    app.main()
