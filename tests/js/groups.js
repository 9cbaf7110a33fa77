// Consumes with a kafkajs consumer group and commits explicitly, for
// tests/python/test_groups.py to check where the group resumes.
//
//   node groups.js consume-commit BOOTSTRAP TOPIC GROUP COMMIT_AFTER TAIL TIMEOUT_MS
//     Joins GROUP, which starts from the beginning when it has no committed
//     offsets. Consumes COMMIT_AFTER records and commits the next offset of
//     every partition it consumed. Then consumes TAIL more records without
//     committing them and leaves the group. Prints {"records":
//     [{"partition", "offset"}, ...], "committed": {partition: offset}}.
//
// Auto-commit is off, so the only commit is the explicit one. Exits 0 on
// success, 1 on a client error and 2 when the deadline passes.

"use strict";

const { Kafka, logLevel } = require("kafkajs");

async function consumeCommit(bootstrap, topic, group, commitAfter, tail, timeoutMs) {
  const kafka = new Kafka({
    clientId: "weir-groups",
    brokers: [bootstrap],
    logLevel: logLevel.ERROR,
    retry: { retries: 5 },
  });
  const consumer = kafka.consumer({ groupId: group, sessionTimeout: 10000, heartbeatInterval: 500 });
  const total = commitAfter + tail;
  const records = [];
  const positions = {};
  let committed = null;
  let timer;

  try {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise((resolve, reject) => {
      timer = setTimeout(
        () => reject(Object.assign(new Error(`consumed ${records.length} of ${total} records in ${timeoutMs} ms`), { timedOut: true })),
        timeoutMs,
      );
      consumer.on(consumer.events.CRASH, (event) => reject(event.payload.error));
      const commitIfDue = async () => {
        if (committed === null && records.length >= commitAfter) {
          const offsets = Object.entries(positions).map(([partition, offset]) => ({
            topic,
            partition: Number(partition),
            offset: String(offset),
          }));
          if (offsets.length > 0) {
            await consumer.commitOffsets(offsets);
          }
          committed = { ...positions };
        }
        if (committed !== null && records.length >= total) {
          resolve();
        }
      };
      consumer
        .run({
          autoCommit: false,
          eachMessage: async ({ partition, message }) => {
            if (records.length >= total) {
              return; // Fetched after the last wanted record: neither recorded nor committed.
            }
            records.push({ partition, offset: message.offset });
            positions[partition] = Number(message.offset) + 1;
            await commitIfDue();
          },
        })
        .then(commitIfDue)
        .catch(reject);
    });
  } finally {
    clearTimeout(timer);
    await consumer.disconnect();
  }
  return { records, committed };
}

function writeAndExit(text, code) {
  // process.exit drops buffered output on a pipe, so exit once it is written.
  process.stdout.write(text, () => process.exit(code));
}

async function main() {
  const [mode, bootstrap, topic, group, commitAfter, tail, timeoutMs] = process.argv.slice(2);
  if (mode !== "consume-commit") {
    throw new Error(`unknown mode ${mode}: expected consume-commit`);
  }
  return consumeCommit(bootstrap, topic, group, Number(commitAfter), Number(tail), Number(timeoutMs));
}

main().then(
  (result) => writeAndExit(JSON.stringify(result) + "\n", 0),
  (error) => {
    process.stderr.write(`kafkajs ${process.argv[2]} failed: ${error && error.stack ? error.stack : error}\n`, () =>
      process.exit(error && error.timedOut ? 2 : 1),
    );
  },
);
