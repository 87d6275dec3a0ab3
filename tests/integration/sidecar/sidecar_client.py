#!/usr/bin/python3
"""An independent client of certagent's sidecar API: Debian's python3-grpcio, with stubs that
protoc and grpc_python_plugin generate from agent/sidecar/proto at build time.

Prints one JSON object per line for every message received and a last {"end": ...} line with
the gRPC status that ended the call, so the C++ test can wait for lines. Key material is never
printed: only SHA-256 digests of it.

    sidecar_client.py SOCKET sds NAME...            StreamSecrets, ACKs every response
    sidecar_client.py SOCKET sds-nack NAME...       StreamSecrets, NACKs the first response
    sidecar_client.py SOCKET fetch NAME...          FetchSecrets
    sidecar_client.py SOCKET delta NAME             DeltaSecrets (expected: UNIMPLEMENTED)
    sidecar_client.py SOCKET svid [--no-header]     FetchX509SVID
    sidecar_client.py SOCKET bundles                FetchX509Bundles
    sidecar_client.py SOCKET jwt                    FetchJWTSVID (expected: UNIMPLEMENTED)
"""

import hashlib
import json
import queue
import ssl
import sys

import grpc

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2
from spiffe.workload import workload_pb2, workload_pb2_grpc

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
HEADER = [("workload.spiffe.io", "true")]


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def pem_certs(pem):
    """DER of every certificate in a PEM string, in order."""
    out = []
    text = pem.decode() if isinstance(pem, bytes) else pem
    end = "-----END CERTIFICATE-----"
    for block in text.split(end)[:-1]:
        out.append(ssl.PEM_cert_to_DER_cert(block[block.index("-----BEGIN"):] + end + "\n"))
    return out


def der_certs(der):
    """Splits concatenated DER certificates (each a SEQUENCE with a long-form length)."""
    out = []
    i = 0
    while i < len(der):
        if der[i] != 0x30:
            raise ValueError("not a DER SEQUENCE at %d" % i)
        first = der[i + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            n = first & 0x7F
            length = int.from_bytes(der[i + 2:i + 2 + n], "big")
            header = 2 + n
        out.append(der[i:i + header + length])
        i += header + length
    return out


def describe_secret(any_msg):
    if any_msg.type_url != SECRET_TYPE:
        return {"type_url": any_msg.type_url}
    s = secret_pb2.Secret()
    any_msg.Unpack(s)
    if s.HasField("tls_certificate"):
        chain = pem_certs(s.tls_certificate.certificate_chain.inline_bytes)
        return {"name": s.name, "kind": "tls", "leaf_sha256": sha256(chain[0]) if chain else "",
                "chain_certs": len(chain),
                "key_sha256": sha256(s.tls_certificate.private_key.inline_bytes)}
    if s.HasField("validation_context"):
        ca = s.validation_context.trusted_ca.inline_bytes
        return {"name": s.name, "kind": "trust", "trusted_ca_sha256": sha256(ca)}
    return {"name": s.name, "kind": "other"}


def describe_response(r):
    return {"type": "sds", "version": r.version_info, "nonce": r.nonce, "type_url": r.type_url,
            "resources": sorted((describe_secret(a) for a in r.resources), key=lambda x: x.get("name", ""))}


def end(err):
    if err is None:
        emit({"end": "OK"})
    else:
        emit({"end": err.code().name, "message": err.details() or ""})


def stream_secrets(stub, names, nack_first):
    requests = queue.Queue()
    requests.put(discovery_pb2.DiscoveryRequest(resource_names=names, type_url=SECRET_TYPE,
                                                node={"id": "python-test", "cluster": "test"}))

    def gen():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    version = ""
    nacked = False
    try:
        for r in stub.StreamSecrets(gen()):
            emit(describe_response(r))
            if nack_first and not nacked:
                nacked = True
                requests.put(discovery_pb2.DiscoveryRequest(
                    version_info=version, resource_names=names, type_url=SECRET_TYPE,
                    response_nonce=r.nonce,
                    error_detail=status_pb2.Status(code=3, message="test: rejected on purpose")))
            else:
                version = r.version_info
                requests.put(discovery_pb2.DiscoveryRequest(
                    version_info=version, resource_names=names, type_url=SECRET_TYPE,
                    response_nonce=r.nonce))
        end(None)
    except grpc.RpcError as e:
        end(e)
    finally:
        requests.put(None)


def main():
    path, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    channel = grpc.insecure_channel("unix://" + path)
    sds = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    workload = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    emit({"started": mode})
    if mode in ("sds", "sds-nack"):
        stream_secrets(sds, args, mode == "sds-nack")
    elif mode == "fetch":
        try:
            r = sds.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=args, type_url=SECRET_TYPE),
                                 timeout=20)
            emit(describe_response(r))
            end(None)
        except grpc.RpcError as e:
            end(e)
    elif mode == "delta":
        try:
            for r in sds.DeltaSecrets(iter([discovery_pb2.DeltaDiscoveryRequest(
                    type_url=SECRET_TYPE, resource_names_subscribe=args)]), timeout=20):
                emit({"type": "delta"})
            end(None)
        except grpc.RpcError as e:
            end(e)
    elif mode == "svid":
        metadata = [] if "--no-header" in args else HEADER
        try:
            for r in workload.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=metadata):
                svids = []
                for s in r.svids:
                    chain = der_certs(s.x509_svid)
                    svids.append({"spiffe_id": s.spiffe_id, "hint": s.hint,
                                  "leaf_sha256": sha256(chain[0]), "chain_certs": len(chain),
                                  "key_sha256": sha256(s.x509_svid_key),
                                  "bundle_certs": len(der_certs(s.bundle))})
                emit({"type": "svid", "svids": svids})
            end(None)
        except grpc.RpcError as e:
            end(e)
    elif mode == "bundles":
        try:
            for r in workload.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER):
                emit({"type": "bundles",
                      "bundles": {k: len(der_certs(v)) for k, v in r.bundles.items()}})
            end(None)
        except grpc.RpcError as e:
            end(e)
    elif mode == "jwt":
        try:
            workload.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER, timeout=20)
            end(None)
        except grpc.RpcError as e:
            end(e)
    else:
        print("unknown mode " + mode, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
