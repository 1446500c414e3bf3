"""A real client in another language: Python grpcio, with stubs generated from proto/ alone.

Starts `hch up` (a coordinator and two oracle workers) on a free port, asks a wildcard question
whose answer this script computes itself from docs/domains.md's definition, checks that a
malformed request and bytes that are no protobuf at all are refused with INVALID_ARGUMENT, then
stops the server with SIGTERM and expects a clean
exit. Then the same over TLS, each server in its own process as an operator would run them: a
worker that requires a client certificate from the cluster CA, a coordinator that holds one and
serves TLS to its clients (certificates from scripts/dev-certs.sh); grpcio asks with and
without a client certificate, and a plain-text channel gets nothing.
Run by .ci/run:  python tests/python/client_test.py target/debug/hch
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


def start(args):
    """Starts an hch server and returns (process, address) from its 'listening on' line."""
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        server.kill()
        raise AssertionError(f"unexpected first line from {args[1]}: {line!r}")
    return server, match.group(1)


def stop(server):
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=30)
    assert code == 0, f"{server.args[1]} exited with {code} after SIGTERM"


def tls_case(binary, hch_pb2, hch_pb2_grpc):
    """Mutual TLS between coordinator and worker, TLS to the client. Returns checks passed."""
    passed = 0
    with tempfile.TemporaryDirectory() as certs:
        subprocess.run([os.path.join(ROOT, "scripts", "dev-certs.sh"), certs, "1"], check=True,
                       stdout=subprocess.DEVNULL)
        pem = lambda name: open(os.path.join(certs, name), "rb").read()
        path = lambda name: os.path.join(certs, name)
        worker, worker_addr = start([
            binary, "worker", "--oracle", "--listen", "127.0.0.1:0",
            "--tls-cert", path("worker.crt"), "--tls-key", path("worker.key"),
            "--tls-client-ca", path("cluster-ca.crt")])
        try:
            coordinator, addr = start([
                binary, "coordinator", "--listen", "127.0.0.1:0", "--workers", worker_addr,
                "--tls-cert", path("coordinator.crt"), "--tls-key", path("coordinator.key"),
                "--tls-client-ca", path("client-ca.crt"),
                "--worker-tls-ca", path("cluster-ca.crt"),
                "--worker-tls-cert", path("coordinator.crt"),
                "--worker-tls-key", path("coordinator.key"),
                "--worker-tls-name", "hch-worker"])
            try:
                facts = "000000:+1 010011:+1 010110:-1 011010:+1 110000:-1 110011:+1"
                anonymous = grpc.ssl_channel_credentials(root_certificates=pem("cluster-ca.crt"))
                with_cert = grpc.ssl_channel_credentials(
                    root_certificates=pem("cluster-ca.crt"), private_key=pem("client.key"),
                    certificate_chain=pem("client.crt"))
                for credentials in [anonymous, with_cert]:
                    with grpc.secure_channel(addr, credentials) as channel:
                        stub = hch_pb2_grpc.CoordinatorStub(channel)
                        status = stub.Status(hch_pb2.StatusRequest(), timeout=10)
                        assert [w.healthy for w in status.workers] == [True], status
                        reply = stub.Ask(hch_pb2.AskRequest(
                            domain="wildcard", instance_text=facts, question="*1****",
                            mode="hch:3"), timeout=10)
                        assert reply.known and int(reply.answer) == wildcard_truth(facts, "*1****")
                        assert reply.stats.answerer_queries > 0, reply
                        passed += 1
                # Plain text to the TLS port: no answer.
                with grpc.insecure_channel(addr) as channel:
                    try:
                        hch_pb2_grpc.CoordinatorStub(channel).Status(
                            hch_pb2.StatusRequest(), timeout=5)
                        raise AssertionError("a plain-text client was served")
                    except grpc.RpcError as e:
                        assert e.code() in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.DEADLINE_EXCEEDED), e
                        passed += 1
                # The worker itself, with a user's certificate (not the cluster CA's): refused.
                with grpc.secure_channel(worker_addr, with_cert, options=[
                        ("grpc.ssl_target_name_override", "hch-worker")]) as channel:
                    try:
                        hch_pb2_grpc.WorkerStub(channel).ModelInfo(
                            hch_pb2.ModelInfoRequest(), timeout=5)
                        raise AssertionError("a worker served a user's certificate")
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                        passed += 1
            finally:
                stop(coordinator)
        finally:
            stop(worker)
        passed += 1
    return passed


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
        passed += tls_case(binary, hch_pb2, hch_pb2_grpc)
        print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "hch"))
