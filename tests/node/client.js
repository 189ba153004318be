#!/usr/bin/env node
// A Node.js caller of the ZStack gRPC gateway, as a service written in JavaScript would be one.
//
//   node tests/node/client.js TARGET VM_UUID [--session UUID] [--timeout SECONDS] [--protos DIR]
//                             [--attach ISO_UUID [--request-id ID]]
//
// It streams zstack.v1.VmInstanceService/GetCandidateIso from TARGET (host:port, plaintext) and
// prints each message as one JSON line; with --attach it calls AttachIso instead and prints one JSON
// line, {"jobUuid": <x-zstack-job-uuid of the initial metadata>, "response": AttachIsoResponse}, in the proto3 JSON form with ZStack's keys (what grpcurl and
// Python's json_format print). On failure it prints one JSON line on stderr: the google.rpc.Status
// decoded from the `grpc-status-details-bin` trailer, in the same JSON form (each detail with its
// "@type"), plus `codeName`; and exits 1.
//
// The session comes from --session or $ZSTACK_SESSION and goes out as `authorization: OAuth <uuid>`.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const USAGE =
  'usage: node client.js TARGET VM_UUID [--session UUID] [--timeout SECONDS] [--protos DIR] ' +
  '[--attach ISO_UUID [--request-id ID]]';
const SERVICE_FILE = 'zstack/v1/vm_instance_service.proto';

// google.rpc.Status, ErrorInfo and BadRequest: the fields this client reads, with the field numbers
// of googleapis' google/rpc/status.proto and error_details.proto, so that the client needs no copy
// of those files. Detail types not listed here are printed with their bytes in base64.
const GOOGLE_RPC = {
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            BadRequest: {
              fields: { fieldViolations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: {
                    field: { type: 'string', id: 1 },
                    description: { type: 'string', id: 2 },
                    reason: { type: 'string', id: 3 },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

// One protobufjs root with the gateway's protos and the google.rpc types, for JSON printing and
// for decoding the status details.
function loadTypes(protosDir) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protosDir, target);
  root.loadSync([SERVICE_FILE, 'zstack/v1/error.proto', 'google/protobuf/any.proto']);
  root.addJSON(GOOGLE_RPC.nested);
  root.resolveAll();
  return root;
}

// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as proto3 JSON writes a Timestamp.
function timestampJson({ seconds = 0, nanos = 0 }) {
  const base = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  if (!nanos) return `${base}Z`;
  const digits = String(nanos).padStart(9, '0');
  const keep = nanos % 1e6 === 0 ? 3 : nanos % 1e3 === 0 ? 6 : 9;
  return `${base}.${digits.slice(0, keep)}Z`;
}

function valueJson(value) {
  if (value.structValue !== undefined) return structJson(value.structValue);
  if (value.listValue !== undefined) return (value.listValue.values || []).map(valueJson);
  for (const kind of ['stringValue', 'numberValue', 'boolValue']) {
    if (value[kind] !== undefined) return value[kind];
  }
  return null;
}

function structJson(struct) {
  const fields = struct.fields || {};
  return Object.fromEntries(Object.keys(fields).map((key) => [key, valueJson(fields[key])]));
}

// The proto3 JSON form of `obj`, a plain object of protobuf type `type` (as grpc-js and
// Type.toObject give it, int64 as strings): JSON names, well-known types in their JSON form,
// unset and empty fields left out.
function toJson(type, obj) {
  switch (type.fullName) {
    case '.google.protobuf.Timestamp':
      return timestampJson(obj);
    case '.google.protobuf.Struct':
      return structJson(obj);
    case '.google.protobuf.Value':
      return valueJson(obj);
    case '.google.protobuf.Any':
      return anyJson(type.root, obj);
    default:
      break;
  }
  const out = {};
  for (const field of type.fieldsArray) {
    const value = obj[field.name];
    if (value === undefined || value === null) continue;
    const one = field.resolvedType instanceof protobuf.Type ? (v) => toJson(field.resolvedType, v) : (v) => v;
    const name = (field.options && field.options.json_name) || field.name;
    if (field.repeated) {
      if (value.length) out[name] = value.map(one);
    } else if (field.map) {
      const keys = Object.keys(value);
      if (keys.length) out[name] = Object.fromEntries(keys.map((k) => [k, one(value[k])]));
    } else {
      out[name] = one(value);
    }
  }
  return out;
}

function anyJson(root, any) {
  const typeUrl = any.typeUrl || any.type_url || '';
  const value = Buffer.from(any.value || []);
  const type = root.lookup(typeUrl.slice(typeUrl.lastIndexOf('/') + 1));
  if (!(type instanceof protobuf.Type)) return { '@type': typeUrl, value: value.toString('base64') };
  return { '@type': typeUrl, ...toJson(type, plain(type, type.decode(value))) };
}

function plain(type, message) {
  return type.toObject(message, { longs: String, enums: String, bytes: Array });
}

function codeName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

// The rich status of a failed call: google.rpc.Status from `grpc-status-details-bin` when the
// server sent one, else the code and message alone.
function statusJson(root, err) {
  const [raw] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  let status = { code: err.code, message: err.details };
  if (raw) {
    const type = root.lookupType('google.rpc.Status');
    status = toJson(type, plain(type, type.decode(raw)));
  }
  return { codeName: codeName(err.code), ...status };
}

function main(argv) {
  let args;
  try {
    args = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        session: { type: 'string', default: process.env.ZSTACK_SESSION || '' },
        timeout: { type: 'string', default: '30' },
        protos: { type: 'string', default: path.resolve(__dirname, '..', '..', 'protos') },
        attach: { type: 'string' },
        'request-id': { type: 'string', default: '' },
      },
    });
  } catch (e) {
    console.error(`${e.message}\n${USAGE}`);
    return process.exit(2);
  }
  const [target, vmInstanceUuid] = args.positionals;
  if (!target || !vmInstanceUuid || args.positionals.length > 2) {
    console.error(USAGE);
    return process.exit(2);
  }
  const { session, timeout, protos } = args.values;

  const root = loadTypes(protos);
  const responseType = root.lookupType('zstack.v1.GetCandidateIsoResponse');
  // The options the README gives for a Node caller; camelCase field names are the protos' JSON
  // names, which are ZStack's keys.
  const definition = protoLoader.loadSync(SERVICE_FILE, {
    includeDirs: [protos],
    keepCase: false, // camelCase names: ZStack's JSON keys (mediaType, backupStorageRefs, ...)
    longs: String, // int64 as decimal strings, exact; Number would round beyond 2^53 - 1
    enums: String,
    defaults: true, // absent repeated fields are [], messages null; `optional` scalars stay undefined
    oneofs: false, // `optional` is a one-field oneof: true would add keys such as `_size: 'size'`
  });
  const { VmInstanceService } = grpc.loadPackageDefinition(definition).zstack.v1;
  const client = new VmInstanceService(target, grpc.credentials.createInsecure());

  const metadata = new grpc.Metadata();
  if (session) metadata.set('authorization', `OAuth ${session}`);
  const deadline = new Date(Date.now() + Number(timeout) * 1000);
  if (args.values.attach !== undefined) {
    const attachType = root.lookupType('zstack.v1.AttachIsoResponse');
    const request = { vmInstanceUuid, isoUuid: args.values.attach, requestId: args.values['request-id'] };
    let jobUuid = null;
    const unary = client.attachIso(request, metadata, { deadline }, (err, response) => {
      if (err) {
        process.stderr.write(`${JSON.stringify({ jobUuid, ...statusJson(root, err) })}\n`);
        process.exitCode = 1;
      } else {
        process.stdout.write(`${JSON.stringify({ jobUuid, response: toJson(attachType, response) })}\n`);
      }
      client.close();
    });
    unary.on('metadata', (md) => {
      const [job] = md.get('x-zstack-job-uuid');
      if (job) jobUuid = job;
    });
    return undefined;
  }
  const call = client.getCandidateIso({ vmInstanceUuid }, metadata, { deadline });
  call.on('data', (message) => {
    process.stdout.write(`${JSON.stringify(toJson(responseType, message))}\n`);
  });
  call.on('error', (err) => {
    process.stderr.write(`${JSON.stringify(statusJson(root, err))}\n`);
    process.exitCode = 1;
    client.close();
  });
  call.on('end', () => client.close());
}

main(process.argv.slice(2));
