// Produces or consumes test records with kafkajs and prints the results as
// JSON on stdout, for tests/python/test_kafkajs.py to check.
//
//   node round_trip.js produce BOOTSTRAP TOPIC COUNT PARTITIONS
//     Sends record i to partition i % PARTITIONS in requests of 100 records
//     (gzip, acks=all) and prints {"requests": [[{"partition", "errorCode",
//     "baseOffset"}, ...], ...]}, one inner list per request.
//   node round_trip.js consume BOOTSTRAP TOPIC COUNT TIMEOUT_MS
//     Reads COUNT records from the beginning with a consumer group and prints
//     {"records": [{"partition", "offset", "key", "value", "headers"}, ...]}.
//
// Exits 0 on success, 1 on a client error and 2 when the deadline passes.

"use strict";

const { Kafka, CompressionTypes, logLevel } = require("kafkajs");

const BATCH_RECORDS = 100;

function makeRecord(index, partitions) {
  return {
    partition: index % partitions,
    key: index % 9 === 0 ? null : `key-${index % 20}`,
    value: index % 31 === 0 ? null : `kafkajs value ${index}`,
    headers: { index: String(index), client: "kafkajs" },
  };
}

function client(bootstrap) {
  return new Kafka({
    clientId: "weir-tests",
    brokers: [bootstrap],
    logLevel: logLevel.ERROR,
    retry: { retries: 3 },
  });
}

async function produce(bootstrap, topic, count, partitions) {
  const producer = client(bootstrap).producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const results = [];
  try {
    for (let start = 0; start < count; start += BATCH_RECORDS) {
      const messages = [];
      for (let i = start; i < Math.min(count, start + BATCH_RECORDS); i++) {
        messages.push(makeRecord(i, partitions));
      }
      const metadata = await producer.send({
        topic,
        acks: -1,
        compression: CompressionTypes.GZIP,
        messages,
      });
      results.push(
        metadata.map((m) => ({ partition: m.partition, errorCode: m.errorCode, baseOffset: m.baseOffset })),
      );
    }
  } finally {
    await producer.disconnect();
  }
  return { requests: results };
}

function text(buffer) {
  return buffer === null || buffer === undefined ? null : buffer.toString();
}

async function consume(bootstrap, topic, count, timeoutMs) {
  const consumer = client(bootstrap).consumer({ groupId: `weir-tests-${topic}` });
  const records = [];
  let timer;
  try {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    const done = new Promise((resolve, reject) => {
      timer = setTimeout(
        () => reject(Object.assign(new Error(`consumed ${records.length} of ${count} records in ${timeoutMs} ms`), { timedOut: true })),
        timeoutMs,
      );
      consumer.on(consumer.events.CRASH, (event) => reject(event.payload.error));
      consumer
        .run({
          eachMessage: async ({ partition, message }) => {
            const headers = {};
            for (const [name, value] of Object.entries(message.headers || {})) {
              headers[name] = text(value);
            }
            records.push({
              partition,
              offset: message.offset,
              key: text(message.key),
              value: text(message.value),
              headers,
            });
            if (records.length >= count) {
              resolve();
            }
          },
        })
        .catch(reject);
    });
    await done;
  } finally {
    clearTimeout(timer);
    await consumer.disconnect();
  }
  return { records };
}

async function main() {
  const [mode, bootstrap, topic, countText, extraText] = process.argv.slice(2);
  const count = Number(countText);
  let result;
  if (mode === "produce") {
    result = await produce(bootstrap, topic, count, Number(extraText));
  } else if (mode === "consume") {
    result = await consume(bootstrap, topic, count, Number(extraText));
  } else {
    throw new Error(`unknown mode ${mode}: expected produce or consume`);
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`kafkajs ${process.argv[2]} failed: ${error && error.stack ? error.stack : error}\n`);
    process.exit(error && error.timedOut ? 2 : 1);
  },
);
