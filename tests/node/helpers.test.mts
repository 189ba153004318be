// Unit tests of the conversions @zstack-gateway/client offers, with node's test runner:
//   npm run build:ts && node --test build/node/
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { ImageInventorySchema, int64ToNumber, toDate } from "@zstack-gateway/client";

test("int64ToNumber is exact up to 2^53 - 1 and refuses beyond", () => {
  assert.equal(int64ToNumber(4712300544n), 4712300544);
  assert.equal(int64ToNumber(9007199254740991n), Number.MAX_SAFE_INTEGER);
  assert.equal(int64ToNumber(-9007199254740991n), Number.MIN_SAFE_INTEGER);
  assert.throws(() => int64ToNumber(9007199254740993n), RangeError);
  assert.throws(() => int64ToNumber(-9007199254740993n), RangeError);
});

test("toDate turns a Timestamp into the same instant and an unset one into undefined", () => {
  const image = create(ImageInventorySchema, {
    createDate: create(TimestampSchema, { seconds: 1658461447n, nanos: 250_000_000 }),
  });
  assert.equal(toDate(image.createDate)?.toISOString(), "2022-07-22T03:44:07.250Z");
  assert.equal(toDate(image.lastOpDate), undefined);
});

test("an unset optional int64 stays apart from 0", () => {
  const image = create(ImageInventorySchema, { actualSize: 0n });
  assert.equal(image.size, undefined);
  assert.equal(image.actualSize, 0n);
});
