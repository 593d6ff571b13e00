#!/usr/bin/env node
// A gasgd_tf client in Node.js, built from the .proto contract alone (no
// generated code, nothing from the Python package): it registers, fetches the
// parameters, pushes one gradient, fetches again, asks for the status and
// leaves, then prints one JSON line with what it saw.
//
//   node client.js HOST:PORT CLIENT_ID
//
// GASGD_TF_TOKEN, when set, is sent as "authorization: Bearer <token>" on every
// call (for servers started with a token). Plaintext channel only: for TLS use
// grpc.credentials.createSsl(...) instead of createInsecure() below.
// On any error it prints the gRPC status code and details and exits with 1.
'use strict';

const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEADLINE_MS = 30_000; // Every call gets a deadline: no call can hang forever.
const MAX_PUSH_RETRIES = 5; // RESOURCE_EXHAUSTED with retry-after-ms: the server is busy.
const GRADIENT_VALUE = 0.5; // The one gradient this example pushes, in every element.

// The contract: protos/gasgd_tf/proto/parameter_service.proto (package gasgd_tf.v1).
const definition = protoLoader.loadSync('gasgd_tf/proto/parameter_service.proto', {
  includeDirs: [path.join(__dirname, '..', '..', 'protos')],
  keepCase: true, // Field names as in the .proto: client_id, total_bytes, ...
  longs: Number, // uint64 as Number: exact below 2^53, plenty for versions and sizes.
  enums: String, // 'DTYPE_FLOAT32'
  defaults: true, // Unset fields read as 0, '', false, [] instead of undefined.
  oneofs: true, // msg.payload names the member of the oneof that is set.
});
const { ParameterService } = grpc.loadPackageDefinition(definition).gasgd_tf.v1;

function usage() {
  console.error('usage: node client.js HOST:PORT CLIENT_ID');
  process.exit(2);
}

function callMetadata() {
  const metadata = new grpc.Metadata();
  const token = (process.env.GASGD_TF_TOKEN || '').trim();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

function callOptions() {
  return { deadline: Date.now() + DEADLINE_MS };
}

// Tags an error with the call that failed (gRPC errors keep code, details, metadata).
function failed(rpc, err) {
  err.rpc = rpc;
  return err;
}

function unary(stub, rpc, request) {
  return new Promise((resolve, reject) => {
    stub[rpc](request, callMetadata(), callOptions(), (err, response) =>
      err ? reject(failed(rpc, err)) : resolve(response));
  });
}

// Fetch: a FetchHeader, then chunks in order; returns { version, tensors, values }.
async function fetchParameters(stub, clientId) {
  const request = { client_id: clientId, read_only: false, dtype: 'DTYPE_FLOAT32' };
  const call = stub.Fetch(request, callMetadata(), callOptions());
  let header = null;
  let bytes = null;
  let received = 0;
  try {
    for await (const message of call) {
      if (message.payload === 'header') {
        header = message.header;
        // A fresh buffer: its byteOffset is 0, so a Float32Array can view it.
        // (chunk.data Buffers may sit at any offset of a shared pool: copy, never view.)
        bytes = new Uint8Array(header.total_bytes);
      } else {
        const { offset, data } = message.chunk;
        if (header === null || offset !== received || received + data.length > bytes.length) {
          throw new Error(`chunk at offset ${offset} out of order (have ${received} bytes)`);
        }
        bytes.set(data, offset);
        received += data.length;
      }
    }
  } catch (err) {
    throw failed('Fetch', err);
  }
  if (header === null || received !== bytes.length) {
    const expected = bytes ? bytes.length : '?';
    throw failed('Fetch', new Error(`stream ended after ${received} of ${expected} bytes`));
  }
  const values = new Float32Array(bytes.buffer, 0, bytes.length / 4);
  return { version: header.version, serverId: header.server_id, tensors: header.tensors, values };
}

// Push: a PushHeader, then the gradient's raw bytes in contiguous chunks.
function pushOnce(stub, header, gradient, chunkBytes) {
  return new Promise((resolve, reject) => {
    const call = stub.Push(callMetadata(), callOptions(), (err, response) =>
      err ? reject(failed('Push', err)) : resolve(response));
    const bytes = Buffer.from(gradient.buffer, gradient.byteOffset, gradient.byteLength);
    call.write({ header });
    for (let offset = 0; offset < bytes.length; offset += chunkBytes) {
      // grpc-js buffers what the network cannot take yet; fine for one push.
      call.write({ chunk: { offset, data: bytes.subarray(offset, offset + chunkBytes) } });
    }
    call.end();
  });
}

// A busy server answers RESOURCE_EXHAUSTED with trailing metadata retry-after-ms;
// repeating the push with the same sequence is safe (applied at most once).
async function push(stub, header, gradient, chunkBytes) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await pushOnce(stub, header, gradient, chunkBytes);
    } catch (err) {
      const retryAfter = err.metadata && err.metadata.get('retry-after-ms')[0];
      const busy = err.code === grpc.status.RESOURCE_EXHAUSTED && retryAfter;
      if (!busy || attempt >= MAX_PUSH_RETRIES) throw err;
      await new Promise((resolve) => setTimeout(resolve, Number(retryAfter)));
    }
  }
}

async function main() {
  const [address, clientId] = process.argv.slice(2);
  if (!address || !clientId) usage();
  if (os.endianness() !== 'LE') throw new Error('the wire format is little-endian float32');
  const stub = new ParameterService(address, grpc.credentials.createInsecure());

  // Register: no tensors given, so no check; learns the server's tensors and version.
  const registered = await unary(stub, 'Register', { client_id: clientId, tensors: [] });
  if (!registered.initialized) throw new Error('the server is not initialized yet');

  const before = await fetchParameters(stub, clientId);

  // One gradient, every element GRADIENT_VALUE, computed "from" the fetched version.
  const gradient = new Float32Array(before.values.length).fill(GRADIENT_VALUE);
  const maxChunk = registered.capabilities.max_chunk_bytes || 1 << 20;
  const chunkBytes = Math.max(4, Math.min(1 << 20, maxChunk) & ~3); // Whole float32s per chunk.
  const pushed = await push(stub, {
    client_id: clientId,
    sequence: registered.last_sequence + 1, // 1, 2, 3, ... per client id.
    base_version: before.version,
    // The server start that version came from: a server restarted from a
    // checkpoint refuses (ABORTED) a base from a version it lost.
    base_server_id: before.serverId,
    tensors: before.tensors.map((t) => ({ name: t.name, shape: t.shape, dtype: 'DTYPE_FLOAT32' })),
    client_step: 1,
  }, gradient, chunkBytes);

  const after = await fetchParameters(stub, clientId);
  const status = await unary(stub, 'Status', {});
  const left = await unary(stub, 'Leave', { client_id: clientId });
  stub.close();

  const first = (values) => Array.from(values.subarray(0, 5));
  console.log(JSON.stringify({
    client_id: clientId,
    server_id: registered.server_id,
    optimizer: registered.capabilities.optimizer,
    version_registered: registered.version,
    version_before: before.version,
    version_after: after.version,
    num_parameters: after.values.length,
    tensors: after.tensors.map((t) => ({ name: t.name, shape: t.shape })),
    push: { version: pushed.version, staleness: pushed.staleness, duplicate: pushed.duplicate },
    first_values_before: first(before.values),
    first_values_after: first(after.values),
    status: {
      version: status.version,
      updates_applied: status.updates_applied,
      num_parameters: status.num_parameters,
      clients: status.clients.map((c) => ({
        client_id: c.client_id, active: c.active, pushes: c.pushes,
      })),
    },
    version_at_leave: left.version,
  }));
}

main().catch((err) => {
  const where = err.rpc ? `${err.rpc}: ` : '';
  if (typeof err.code === 'number') {
    // A gRPC error: the status code by name and number, and the server's details.
    console.error(`error: ${where}${grpc.status[err.code]} (${err.code}): ${err.details}`);
  } else {
    console.error(`error: ${where}${err.message}`);
  }
  process.exit(1);
});
