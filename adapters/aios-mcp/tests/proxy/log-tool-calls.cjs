#!/usr/bin/env node
// A stdio MCP proxy that counts a server's effects from outside AIOS (for tests/crash.rs).
//
//   node log-tool-calls.cjs LOG COMMAND [ARGS...]
//
// Starts COMMAND ARGS (the real MCP server) and relays newline-delimited JSON-RPC between
// its own stdin/stdout and the server's. Before it relays a `tools/call` request to the
// server, it appends a `call` line to LOG (and fsyncs it); when the server answers that
// request, it appends a `result` line before relaying the answer. So LOG holds every call
// that may have reached the server, whatever happens to the client afterwards: a client
// killed with SIGKILL cannot take back a line already written, and cannot write one either.
//
// Lines (JSON, one per line):
//   {"event":"start","proxy":PID,"server":PID}
//   {"event":"call","proxy":PID,"id":ID,"tool":NAME,"key":IDEMPOTENCY_KEY,"arguments":{...}}
//   {"event":"result","proxy":PID,"id":ID,"tool":NAME,"isError":BOOL,"error":CODE}
//   {"event":"exit","proxy":PID,"code":CODE,"signal":SIGNAL}
//
// When the client goes away (its end of stdin closes), the server's stdin is closed too so
// it can finish what it is doing and exit; it is killed if it has not exited 5 s later.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const readline = require('node:readline');

const [log, command, ...args] = process.argv.slice(2);
if (!log || !command) {
  process.stderr.write('usage: node log-tool-calls.cjs LOG COMMAND [ARGS...]\n');
  process.exit(2);
}

const fd = fs.openSync(log, 'a');
function record(event) {
  fs.writeSync(fd, JSON.stringify({ ...event, proxy: process.pid }) + '\n');
  fs.fsyncSync(fd);
}

const server = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] });
record({ event: 'start', server: server.pid ?? null });

// JSON-RPC request id (as JSON) -> tool name, for the calls not answered yet
const calls = new Map();

// a client killed mid-conversation leaves broken pipes behind: not an error here
process.stdout.on('error', () => {});
server.stdin.on('error', () => {});

readline
  .createInterface({ input: process.stdin, crlfDelay: Infinity })
  .on('line', (line) => {
    let msg = null;
    try {
      msg = JSON.parse(line);
    } catch {
      // not JSON: relayed as it is, the server answers it
    }
    if (msg && msg.method === 'tools/call' && msg.params && msg.id !== undefined) {
      calls.set(JSON.stringify(msg.id), msg.params.name);
      const meta = msg.params._meta || {};
      record({
        event: 'call',
        id: msg.id,
        tool: msg.params.name,
        key: meta['aios/idempotency_key'] ?? null,
        arguments: msg.params.arguments ?? null,
      });
    }
    server.stdin.write(line + '\n');
  })
  .on('close', () => {
    server.stdin.end();
    setTimeout(() => server.kill('SIGKILL'), 5000).unref();
  });

readline
  .createInterface({ input: server.stdout, crlfDelay: Infinity })
  .on('line', (line) => {
    let msg = null;
    try {
      msg = JSON.parse(line);
    } catch {
      // relayed as it is
    }
    if (msg && msg.id !== undefined && !msg.method) {
      const key = JSON.stringify(msg.id);
      if (calls.has(key)) {
        record({
          event: 'result',
          id: msg.id,
          tool: calls.get(key),
          isError: Boolean(msg.result && msg.result.isError) || Boolean(msg.error),
          error: msg.error ? msg.error.code : null,
        });
        calls.delete(key);
      }
    }
    process.stdout.write(line + '\n');
  });

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.kill(signal));
}

server.on('exit', (code, signal) => {
  record({ event: 'exit', code, signal });
  process.exit(0);
});
server.on('error', (e) => {
  process.stderr.write(`log-tool-calls: cannot start \`${command}\`: ${e.message}\n`);
  record({ event: 'exit', code: null, signal: null, error: e.message });
  process.exit(1);
});
