// A stockcore caller written in JavaScript with nothing but the .proto files: it reserves
// over TLS with a bearer token, then makes a call its token has no scope for and reads
// the refusal's google.rpc.Status details (ErrorInfo). Prints one JSON line.
//
//   node caller.mjs <host:port> <ca.pem> <token> <protos dir> <google protos dir> <sku>

import { readFileSync } from "node:fs";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [target, caFile, token, protos, googleProtos, sku] = process.argv.slice(2);
const options = { keepCase: true, longs: String, enums: String, defaults: true };
const loaded = protoLoader.loadSync(
  ["stockcore/v1/inventory.proto"],
  // The google/api/annotations.proto they import (the HTTP routes) is among the Google protos.
  { ...options, includeDirs: [protos, googleProtos] },
);
const api = grpc.loadPackageDefinition(loaded);

const tls = grpc.credentials.createSsl(readFileSync(caFile));
const bearer = grpc.credentials.createFromMetadataGenerator((_, callback) => {
  const metadata = new grpc.Metadata();
  metadata.add("authorization", `Bearer ${token}`);
  callback(null, metadata);
});
const client = new api.stockcore.v1.InventoryService(
  target,
  grpc.credentials.combineChannelCredentials(tls, bearer),
);

function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client[method](request, { deadline }, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

// google.rpc.Status rides in the trailer grpc-status-details-bin; its details are Any,
// decoded with types read from google/rpc/*.proto.
const rpcTypes = new protobuf.Root();
rpcTypes.resolvePath = (_, file) => path.join(googleProtos, file);
rpcTypes.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);

function errorInfo(error) {
  const [raw] = error.metadata.get("grpc-status-details-bin");
  const status = rpcTypes.lookupType("google.rpc.Status").decode(raw);
  const info = status.details.find((any) => any.type_url.endsWith("/google.rpc.ErrorInfo"));
  const ErrorInfo = rpcTypes.lookupType("google.rpc.ErrorInfo");
  return ErrorInfo.toObject(ErrorInfo.decode(info.value));
}

const reserved = await call("Reserve", {
  reservation_id: `node-${process.pid}`,
  lines: [{ sku, quantity: 1 }],
});
let refused = null;
try {
  await call("AdjustStock", { sku, delta: 1, reason: "not allowed", idempotency_key: "node" });
} catch (error) {
  const info = errorInfo(error);
  refused = {
    code: grpc.status[error.code],
    reason: info.reason,
    domain: info.domain,
    metadata: info.metadata,
  };
}
console.log(JSON.stringify({ reserved: reserved.reservation.status, refused }));
client.close();
