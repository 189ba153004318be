// A TypeScript caller of the ZStack gRPC gateway with the generated client (client-ts/,
// @zstack-gateway/client: protobuf-es messages, Connect's gRPC transport for Node).
//
//   npm run build:ts        # compiles client-ts/ and this file into build/node/
//   node build/node/candidates.mjs TARGET VM_UUID [--session UUID] [--timeout SECONDS] [--json]
//
// It streams zstack.v1.VmInstanceService/GetCandidateIso from TARGET (host:port, plaintext) and
// prints one line per image, tab-separated: uuid, name, size in bytes, size in GiB, creation time.
// The size is an int64, a `bigint` in the message: its digits are printed exactly, and it becomes a
// `number` for the GiB. The creation time is a Timestamp, printed as a Date's ISO form. With --json
// it prints each stream message in the proto3 JSON form instead (int64 as strings, Timestamps in
// RFC 3339), as grpcurl and Python's json_format do.
//
// On failure it prints one JSON line on stderr, {"code", "message", "zstack"}: the gRPC code's name,
// the status message and the ZStack ErrorCode from the status details (absent when the failure did
// not come from ZStack); and exits 1.
import { parseArgs } from "node:util";
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  createVmInstanceClient,
  ErrorCodeSchema,
  GetCandidateIsoResponseSchema,
  type ImageInventory,
  toDate,
  zstackErrorOf,
} from "@zstack-gateway/client";

const USAGE =
  "usage: node candidates.mjs TARGET VM_UUID [--session UUID] [--timeout SECONDS] [--json]";

function imageLine(image: ImageInventory): string {
  // int64 fields are bigints, exact. toString() keeps every digit; Number() is exact up to 2^53 - 1
  // (8 PiB as a byte count) and rounds beyond that, which is fine for a size in GiB.
  const bytes = image.size?.toString() ?? "";
  const gib = image.size === undefined ? "" : (Number(image.size) / 2 ** 30).toFixed(2);
  // Timestamps become Dates (millisecond precision).
  const created = toDate(image.createDate)?.toISOString() ?? "";
  return [image.uuid ?? "", image.name ?? "", bytes, gib, created].join("\t");
}

async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        session: { type: "string", default: process.env["ZSTACK_SESSION"] ?? "" },
        timeout: { type: "string", default: "30" },
        json: { type: "boolean", default: false },
      },
    });
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const [target, vmInstanceUuid, ...rest] = args.positionals;
  if (target === undefined || vmInstanceUuid === undefined || rest.length > 0) {
    console.error(USAGE);
    return 2;
  }
  const client = createVmInstanceClient(target, { session: args.values.session });
  const timeoutMs = Number(args.values.timeout) * 1000;
  try {
    for await (const message of client.getCandidateIso({ vmInstanceUuid }, { timeoutMs })) {
      if (args.values.json) {
        process.stdout.write(`${JSON.stringify(toJson(GetCandidateIsoResponseSchema, message))}\n`);
      } else {
        for (const image of message.inventories) process.stdout.write(`${imageLine(image)}\n`);
      }
    }
    return 0;
  } catch (e) {
    const error = ConnectError.from(e);
    const zstack = zstackErrorOf(error);
    const report = {
      code: Code[error.code],
      message: error.rawMessage,
      ...(zstack && { zstack: toJson(ErrorCodeSchema, zstack) }),
    };
    process.stderr.write(`${JSON.stringify(report)}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
