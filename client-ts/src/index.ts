// The TypeScript client of the ZStack gRPC gateway: the zstack.v1 messages and VmInstanceService as
// protoc-gen-es generates them (src/gen, from protos/ by `make gen`), a client factory on Connect's
// gRPC transport for Node, and the conversions a caller needs for int64 and Timestamp fields.
//
// int64 fields (ImageInventory.size, .actualSize, BackupStorageRef.id) are `bigint`: exact for every
// value ZStack can send. `size.toString()` gives every digit; `Number(size)` is exact up to
// 2^53 - 1 (8 PiB as a byte count) and rounds beyond, and `int64ToNumber` throws there instead;
// `toJson` from @bufbuild/protobuf writes them as strings, the proto3 JSON form. Timestamps become
// `Date`s with `toDate`.
import type { Client, Interceptor } from "@connectrpc/connect";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, type GrpcTransportOptions } from "@connectrpc/connect-node";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { type ErrorCode, ErrorCodeSchema } from "./gen/zstack/v1/error_pb.js";
import { VmInstanceService } from "./gen/zstack/v1/vm_instance_service_pb.js";

export * from "./gen/zstack/v1/error_pb.js";
export * from "./gen/zstack/v1/image_pb.js";
export * from "./gen/zstack/v1/image_service_pb.js";
export * from "./gen/zstack/v1/vm_pb.js";
export * from "./gen/zstack/v1/vm_instance_service_pb.js";

/** A client of zstack.v1.VmInstanceService: `getCandidateIso(request, options)` is an async iterable. */
export type VmInstanceClient = Client<typeof VmInstanceService>;

export interface GatewayOptions {
  /** The ZStack session UUID, sent on every call as `authorization: OAuth <uuid>`. */
  session?: string;
  /** More options for Connect's gRPC transport (TLS `nodeOptions`, interceptors, ...). */
  transport?: Partial<GrpcTransportOptions>;
}

/**
 * A client of the gateway at `target`: `host:port` (plaintext HTTP/2, as `make run` serves it) or a
 * URL, `http://host:port` or `https://host:port` (TLS; a private CA goes in
 * `transport.nodeOptions.ca`).
 */
export function createVmInstanceClient(target: string, options: GatewayOptions = {}): VmInstanceClient {
  const baseUrl = /^https?:\/\//.test(target) ? target : `http://${target}`;
  const interceptors: Interceptor[] = [...(options.transport?.interceptors ?? [])];
  const session = options.session;
  if (session) {
    interceptors.unshift((next) => async (req) => {
      req.header.set("authorization", `OAuth ${session}`);
      return next(req);
    });
  }
  const transport = createGrpcTransport({ ...options.transport, baseUrl, interceptors });
  return createClient(VmInstanceService, transport);
}

/**
 * An int64 field's `bigint` as a `number`, which is exact up to 2^53 - 1 (8 PiB as a byte count).
 * Throws a RangeError for a value beyond that instead of rounding it silently.
 */
export function int64ToNumber(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new RangeError(`${value} does not fit a JavaScript number exactly`);
  }
  return Number(value);
}

/** A Timestamp as a Date (millisecond precision); undefined for an unset field. */
export function toDate(timestamp: Timestamp | undefined): Date | undefined {
  return timestamp === undefined ? undefined : timestampDate(timestamp);
}

/**
 * The ZStack ErrorCode a failed call carries (decoded from the status details the gateway sends),
 * or undefined when the failure did not come from ZStack.
 */
export function zstackErrorOf(error: unknown): ErrorCode | undefined {
  return ConnectError.from(error).findDetails(ErrorCodeSchema)[0];
}
