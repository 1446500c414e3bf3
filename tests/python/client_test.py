"""A real client in another language: Python grpcio, with stubs generated from proto/ alone.

Starts `hch up` (a coordinator and two oracle workers) on a free port, asks a wildcard question
whose answer this script computes itself from docs/domains.md's definition, checks that a
malformed request and bytes that are no protobuf at all are refused with INVALID_ARGUMENT, then
stops the server with SIGTERM and expects a clean
exit. Run by .ci/run:  python tests/python/client_test.py target/debug/hch
"""

import os
import re
import signal
import subprocess
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate_stubs(out):
    proto_dir = os.path.join(ROOT, "proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main([
        "protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
        f"--grpc_python_out={out}", os.path.join(proto_dir, "hch", "v1", "hch.proto"),
    ])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out)


def wildcard_truth(facts, pattern):
    total = 0
    for fact in facts.split():
        bits, value = fact.split(":")
        if all(p in ("*", b) for p, b in zip(pattern, bits)):
            total += int(value)
    return total


def main(binary):
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(out)
        from hch.v1 import hch_pb2, hch_pb2_grpc

        server = subprocess.Popen(
            [binary, "up", "--listen", "127.0.0.1:0", "--workers", "2", "--oracle"],
            stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            match = re.search(r"coordinator listening on (\S+)", line)
            assert match, f"unexpected first line from hch up: {line!r}"
            with grpc.insecure_channel(match.group(1)) as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
                stub = hch_pb2_grpc.CoordinatorStub(channel)
                facts = "000000:+1 010011:+1 010110:-1 011010:+1 110000:-1 110011:+1"
                passed = 0
                for pattern in ["*1****", "01****", "*10***", "******", "0*0*1*"]:
                    for mode in ["amplified", "hch:2", "exact"]:
                        reply = stub.Ask(hch_pb2.AskRequest(
                            domain="wildcard", instance_text=facts, question=pattern,
                            mode=mode, want_trace=True), timeout=10)
                        expected = wildcard_truth(facts, pattern)
                        assert reply.known and int(reply.answer) == expected, (pattern, mode, reply)
                        assert reply.trace.nodes[0].question == pattern
                        passed += 1
                try:
                    stub.Ask(hch_pb2.AskRequest(domain="wildcard", instance_text=facts,
                                                question="*1*2**"), timeout=10)
                    raise AssertionError("a malformed question was accepted")
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                    assert "'2'" in e.details(), e.details()
                    passed += 1
                # Bytes that are no protobuf message at all: the client's error, not the server's.
                raw = channel.unary_unary("/hch.v1.Coordinator/Ask",
                                          request_serializer=lambda b: b,
                                          response_deserializer=lambda b: b)
                try:
                    raw(b"\xff\xff\xff\xff", timeout=10)
                    raise AssertionError("an undecodable request was accepted")
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                    assert "AskRequest" in e.details(), e.details()
                    passed += 1
                status = stub.Status(hch_pb2.StatusRequest(), timeout=10)
                assert len(status.workers) == 2 and all(w.healthy for w in status.workers)
                passed += 1
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=30)
        assert code == 0, f"hch up exited with {code} after SIGTERM"
        passed += 1
        print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "hch"))
