"""Exports logs to hourglass with the OpenTelemetry Python SDK's OTLP/HTTP exporter (protobuf), as a service does.

usage: otlp_logs.py URL FIRST_NS
Three records from the service "Checkout" (times FIRST_NS + i s, the second inside a span), and one from
"billing" with only an observed time. Prints each export's result as JSON.
"""
import json
import sys

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

url, first = sys.argv[1], int(sys.argv[2])
results = []


class Recording(OTLPLogExporter):
    def export(self, batch):
        result = super().export(batch)
        results.append(result.name)
        return result


def provider(service):
    p = LoggerProvider(resource=Resource.create({"service.name": service, "host.name": "web1"}))
    p.add_log_record_processor(SimpleLogRecordProcessor(Recording(endpoint=url + "/v1/logs", timeout=10)))
    return p


checkout = provider("Checkout")
log = checkout.get_logger("shop", "1.2")
span = SpanContext(trace_id=0x0af7651916cd43dd8448eb211c80319c, span_id=0xb7ad6b7169203331, is_remote=False,
                   trace_flags=TraceFlags(1))
for i in range(3):
    log.emit(LogRecord(
        timestamp=first + i * 1_000_000_000,
        body=f"paid order {i}" if i != 2 else {"order": i, "items": [1, 2]},
        severity_text="INFO", severity_number=SeverityNumber.INFO,
        attributes={"order.id": i, "ok": True},
        context=set_span_in_context(NonRecordingSpan(span)) if i == 1 else None,
    ))
checkout.shutdown()

billing = provider("billing")
billing.get_logger("bill").emit(LogRecord(observed_timestamp=first + 3_000_000_000, body="invoice sent"))
billing.shutdown()
print(json.dumps({"results": results}))
