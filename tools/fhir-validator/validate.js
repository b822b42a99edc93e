// Validate FHIR R4 JSON files with FHIR.js (an independent validator, not the Python models
// the project writes its output with). Usage: node validate.js FILE...
// Prints one JSON object per file: {"file", "valid", "errors": [{location, message}]}.
// Exit status 0 when every file is valid, 1 otherwise, 2 on bad usage.
"use strict";
const fs = require("fs");
const { Fhir } = require("fhir");

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.js FILE...");
  process.exit(2);
}
const fhir = new Fhir(); // the R4 definitions bundled with FHIR.js
let allValid = true;
for (const file of files) {
  const resource = JSON.parse(fs.readFileSync(file, "utf8"));
  const result = fhir.validate(resource, { errorOnUnexpected: true });
  const errors = result.messages
    .filter((m) => m.severity === "error")
    .map((m) => ({ location: m.location, message: m.message }));
  allValid = allValid && result.valid && errors.length === 0;
  console.log(JSON.stringify({ file, valid: result.valid && errors.length === 0, errors }));
}
process.exit(allValid ? 0 : 1);
