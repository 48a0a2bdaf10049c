// Validate an AsyncAPI document with the official parser (@asyncapi/parser): the AsyncAPI
// JSON Schema of the document's version, the parser's semantic rules (e.g. an operation's
// messages must belong to its channel), and every $ref resolved, local files included.
// Prints one JSON object: valid, version, errors and warnings, and what the document holds
// (channels with their addresses and message names, operations, and each message's payload
// schema as resolved), so the test can compare it with the schemas and the code.
// Exit status: 0 valid, 1 invalid, 2 usage.
"use strict";
const path = require("node:path");
const { Parser, fromFile } = require("@asyncapi/parser");

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: node validate.cjs ASYNCAPI.yaml");
    process.exit(2);
  }
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, path.resolve(file)).parse();
  const report = (d) => ({ code: d.code, message: d.message, path: d.path.join("/") });
  const errors = diagnostics.filter((d) => d.severity === 0).map(report);
  const warnings = diagnostics.filter((d) => d.severity === 1).map(report);
  const out = { valid: document !== undefined && errors.length === 0, errors, warnings };
  if (document !== undefined) {
    out.version = document.version();
    out.channels = document.channels().all().map((c) => ({
      id: c.id(),
      address: c.address(),
      messages: c.messages().all().map((m) => m.id()),
    }));
    out.operations = document.operations().all().map((o) => ({
      id: o.id(),
      action: o.action(),
      channels: o.channels().all().map((c) => c.id()),
    }));
    out.payloads = Object.fromEntries(
      document.messages().all().map((m) => [m.id(), m.payload() ? m.payload().json() : null]),
    );
  }
  console.log(JSON.stringify(out));
  process.exit(out.valid ? 0 : 1);
}

main().catch((err) => {
  console.log(JSON.stringify({ valid: false, errors: [{ code: "exception", message: String(err) }] }));
  process.exit(1);
});
