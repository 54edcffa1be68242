// Test harness for Flamenco job compiler scripts: the documented `author` API and globals that
// a Flamenco Manager gives the script, implemented here so the script can run under Node.
//   node flamenco_harness.js SCRIPT.js SETTINGS.json  ->  the authored tasks as JSON on stdout
"use strict";
const fs = require("fs");
const posix = require("path").posix;
const vm = require("vm");

function explode(frameRange) {  // "1-3,7" -> [1, 2, 3, 7] (Blender's ".." also accepted)
  const frames = new Set();
  for (const part of String(frameRange).replaceAll("..", "-").split(",")) {
    const ends = part.split("-").map((v) => v.trim());
    if (ends.length > 2 || ends.some((v) => !/^\d+$/.test(v))) {
      throw new Error(`invalid range "${frameRange}": ${part}`);
    }
    const first = parseInt(ends[0], 10);
    const last = parseInt(ends[ends.length - 1], 10);
    for (let f = first; f <= last; f++) frames.add(f);
  }
  return [...frames].sort((a, b) => a - b);
}

function merge(frames) {  // [1, 2, 3, 7] -> "1-3,7"; two frames stay "1,2" as Flamenco writes them
  const out = [];
  let start = frames[0];
  let prev = frames[0];
  const close = (a, b) => {
    if (a === b) out.push(String(a));
    else if (a + 1 === b) out.push(String(a), String(b));
    else out.push(`${a}-${b}`);
  };
  for (const f of frames.slice(1)) {
    if (f > prev + 1) {
      close(start, prev);
      start = f;
    }
    prev = f;
  }
  close(start, prev);
  return out.join(",");
}

function frameChunker(frameRange, chunkSize) {
  if (chunkSize < 1) throw new Error(`invalid chunk size: ${chunkSize}`);
  const frames = explode(frameRange);
  if (frames.length === 0) throw new Error(`empty range "${frameRange}"`);
  const chunks = [];
  for (let i = 0; i < frames.length; i += chunkSize) chunks.push(merge(frames.slice(i, i + chunkSize)));
  return chunks;
}

const [scriptPath, settingsPath] = process.argv.slice(2);
const tasks = [];
const author = {
  Task(name, type) {
    if (!String(name).trim() || !String(type).trim()) throw new Error("author.Task needs a name and a type");
    const task = { name, type, commands: [], dependencies: [] };
    task.addCommand = (cmd) => task.commands.push(cmd);
    task.addDependency = (dep) => task.dependencies.push(dep);
    return task;
  },
  Command(name, parameters, totalStepCount) {
    return { name, parameters, totalStepCount: totalStepCount || 0 };
  },
};
const job = {
  settings: JSON.parse(fs.readFileSync(settingsPath, "utf8")),
  addTask: (task) => tasks.push(task),
};
const sandbox = {
  author, job, print: () => {}, alert: () => {},
  frameChunker, frameCount: (r) => explode(r).length,
  path: {
    join: posix.join, dirname: posix.dirname, basename: posix.basename,
    stem: (p) => posix.basename(p, posix.extname(p)),
  },
};
vm.createContext(sandbox);
try {  // a Manager refuses the job with the thrown message: one line here
  vm.runInContext(fs.readFileSync(scriptPath, "utf8") + "\ncompileJob(job);", sandbox,
                  { filename: scriptPath });
} catch (err) {
  process.stderr.write(`compileJob: ${err instanceof Error ? err.message : err}\n`);
  process.exit(1);
}
const names = new Set();
for (const t of tasks) {
  if (names.has(t.name)) throw new Error(`two tasks named ${t.name}`);
  names.add(t.name);
}
process.stdout.write(JSON.stringify({
  job_type: vm.runInContext("JOB_TYPE", sandbox),  // a top-level const is no sandbox property
  tasks: tasks.map((t) => ({
    name: t.name, type: t.type, commands: t.commands,
    dependencies: t.dependencies.map((d) => d.name),
  })),
}));
