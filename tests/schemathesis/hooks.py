"""Schemathesis hooks for hourglass: how to send an `application/x-ndjson` body. The description gives it as a
string of lines; a generated value of another type (a negative case) is sent as bytes that are not NDJSON."""
import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(context, value):
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return value
    return b"not ndjson: " + repr(value).encode()
