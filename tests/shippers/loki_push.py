"""Pushes to hourglass as Promtail and Alloy do: a Loki PushRequest in protobuf, snappy-compressed (block format).

usage: loki_push.py URL FIRST_NS
The message classes come from push.proto, compiled here with grpcio-tools' protoc. Two streams: one with
service_name="checkout" (two entries, one with structured metadata), one with only job="Worker 1". Prints the
status and body of the answer as JSON; then a body that is not snappy, and its answer.
"""
import importlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

import cramjam
from grpc_tools import protoc
import grpc_tools

url, first = sys.argv[1], int(sys.argv[2])
here = os.path.dirname(os.path.abspath(__file__))
out = tempfile.mkdtemp()
include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
if protoc.main(["protoc", f"-I{here}", f"-I{include}", f"--python_out={out}", os.path.join(here, "push.proto")]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, out)
push = importlib.import_module("push_pb2")

req = push.PushRequest()
s = req.streams.add(labels='{service_name="checkout", env="prod"}')
for i, line in enumerate(["paid order 1", "paid order 2"]):
    e = s.entries.add(line=line)
    t = first + i * 1_000_000_000 + 123_456
    e.timestamp.seconds, e.timestamp.nanos = t // 1_000_000_000, t % 1_000_000_000
    if i == 1:
        e.structuredMetadata.add(name="trace_id", value="abc")
w = req.streams.add(labels='{job="Worker 1"}')
e = w.entries.add(line="woke up")
e.timestamp.seconds, e.timestamp.nanos = (first + 2_000_000_000) // 1_000_000_000, 0


def post(body):
    r = urllib.request.Request(url + "/loki/api/v1/push", data=body, method="POST",
                               headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(r, timeout=10) as res:
            return {"status": res.status, "body": res.read().decode()}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": err.read().decode(), "type": err.headers.get("content-type")}


sent = post(bytes(cramjam.snappy.compress_raw(req.SerializeToString())))
bad = post(req.SerializeToString())
print(json.dumps({"sent": sent, "bad": bad}))
