//! The shippers' protocols spoken by their real clients: the official Elasticsearch client's bulk helper, the
//! OpenTelemetry SDK's OTLP/HTTP log exporter, Loki pushes in JSON and in snappy-compressed protobuf. What they
//! sent comes back from exports, in the series their settings name, at the time they gave.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::{FAST, Server, TempDir, iso, now_ms, request};

/// The folder of the clients' scripts.
fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/shippers")
}

/// Whether Python has `modules`; says so (failing under CI) when not.
fn python_has(test: &str, modules: &str, install: &str) -> bool {
    let why = format!("Python cannot import {modules} (pip install {install})");
    crate::support::have(test, "python3", &["-c", &format!("import {modules}")], &why)
}

/// Runs a client script; its last line of output, as JSON.
fn run(script: &str, args: &[&str]) -> Value {
    let text = crate::support::stdout_of(
        Command::new("python3")
            .arg(scripts().join(script))
            .args(args),
    );
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The export of a series over a range around `t` (ms), as JSON values.
fn exported(server: &Server, series: &str, t: i64) -> Vec<Value> {
    let (from, to) = (t / 1000 - 60, t / 1000 + 120);
    let r = server.get(&format!("/api/series/{series}/export?from={from}&to={to}"));
    assert_eq!(r.status, 200, "{series}: {}", r.text());
    r.text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_elasticsearch_clients_bulk_helper_writes_documents_at_their_timestamp() {
    const TEST: &str = "the_elasticsearch_clients_bulk_helper_writes_documents_at_their_timestamp";
    if !python_has(TEST, "elasticsearch", "elasticsearch") {
        return;
    }
    let tmp = TempDir::new("elastic");
    let server = Server::start(tmp.path(), FAST);
    let first = now_ms() / 1000 * 1000 + 2_123;
    let url = format!("http://{}", server.addr);
    let got = run("elastic_bulk.py", &[&url, &first.to_string()]);
    assert_eq!(got["ok"], 8, "{got}");
    assert_eq!(got["errors"], serde_json::json!([]), "{got}");
    assert_eq!(got["refused"]["status"], 400, "{got}");
    assert_eq!(
        got["refused"]["type"], "illegal_argument_exception",
        "{got}"
    );
    assert!(
        got["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("\"delete\" action is not taken"),
        "{got}"
    );

    // The index names the series ("API-Logs" as a series name); each document is stored as sent, at its time.
    let web = exported(&server, "web", first);
    assert_eq!(web.len(), 5, "the refused request stored nothing: {web:?}");
    for (i, doc) in web.iter().enumerate() {
        assert_eq!(doc["ts"], iso(first + i as i64 * 1000), "{doc}");
        assert_eq!(doc["@timestamp"], doc["ts"], "{doc}");
        assert_eq!(doc["message"], format!("web {i}"), "{doc}");
    }
    let api = exported(&server, "api-logs", first);
    let messages: Vec<&str> = api.iter().map(|d| d["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["api 0", "api 1", "api 2"]);

    // Raw bodies as Vector and Beats send them: the index in the URL, `timestamp` or `@timestamp`, gzip.
    let body = format!(
        "{{\"index\":{{}}}}\n{{\"timestamp\":\"{}\",\"message\":\"vector\"}}\n{{\"create\":{{}}}}\n{{\"@timestamp\":\"{}\",\"message\":\"beats\"}}\n",
        iso(first + 10_000),
        iso(first + 11_000)
    );
    let r = request(
        server.addr,
        "POST",
        "/web/_bulk",
        &[
            ("Content-Type", "application/x-ndjson"),
            ("Content-Encoding", "gzip"),
        ],
        &crate::support::gzip(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-elastic-product"), Some("Elasticsearch"));
    let answer = r.json();
    assert_eq!(answer["errors"], false, "{answer}");
    assert_eq!(answer["items"][0]["index"]["status"], 201, "{answer}");
    assert_eq!(answer["items"][1]["create"]["_index"], "web", "{answer}");
    let web = exported(&server, "web", first);
    assert_eq!(web.len(), 7);
    assert_eq!(web[5]["ts"], iso(first + 10_000));
    assert_eq!(web[6]["message"], "beats");

    // Beats asks for less of the answer with filter_path; items left with nothing are left out.
    let doc = format!(
        "{{\"create\":{{}}}}\n{{\"@timestamp\":\"{}\"}}\n",
        iso(first + 12_000)
    );
    for (filter, want) in [
        (
            "errors,items.*.error,items.*.status",
            serde_json::json!({"errors": false, "items": [{"create": {"status": 201}}]}),
        ),
        ("errors", serde_json::json!({"errors": false})),
        ("items.*.error", serde_json::json!({})),
    ] {
        let path = format!("/web/_bulk?filter_path={filter}");
        let r = request(server.addr, "POST", &path, &[], doc.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), want, "{filter}");
    }
    assert_eq!(exported(&server, "web", first).len(), 10);

    // Malformed bodies are refused whole, in Elasticsearch's error shape, naming the item.
    for (body, says) in [
        ("{\"index\":{}}\n{\"a\":1", "item 1: "),
        (
            "{\"index\":{\"_index\":\"web\"}}\n{\"ok\":1}\n{\"index\":{}}\n[1]\n",
            "item 2: ",
        ),
        (
            "{\"index\":{\"_index\":\"web\"}}\n",
            "has no document after it",
        ),
        ("{\"index\":{}}\n{\"a\":1}\n", "no index"),
        ("", "no actions"),
    ] {
        let path = if says == "no index" {
            "/_bulk"
        } else {
            "/web/_bulk"
        };
        let r = request(server.addr, "POST", path, &[], body.as_bytes()).unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["status"], 400, "{e}");
        assert!(
            e["error"]["reason"].as_str().unwrap().contains(says),
            "{body}: {e}"
        );
    }
    assert_eq!(exported(&server, "web", first).len(), 10);
}

/// Unix nanoseconds of a time in ms plus `extra` ns.
fn nanos(ms: i64, extra: i64) -> String {
    (ms * 1_000_000 + extra).to_string()
}

#[test]
fn loki_pushes_in_json_and_in_snappy_protobuf_land_in_their_streams_series() {
    const TEST: &str = "loki_pushes_in_json_and_in_snappy_protobuf_land_in_their_streams_series";
    if !python_has(
        TEST,
        "grpc_tools, cramjam, google.protobuf",
        "grpcio-tools cramjam",
    ) {
        return;
    }
    let tmp = TempDir::new("loki");
    let server = Server::start(tmp.path(), FAST);
    let first = now_ms() / 1000 * 1000 + 2_000;
    let url = format!("http://{}", server.addr);

    // JSON, with curl, as the Loki docs show it.
    let push = format!(
        r#"{{"streams":[{{"stream":{{"job":"web","level":"info"}},"values":[["{}","GET /a"],["{}","GET /b",{{"user":"u1"}}]]}}]}}"#,
        nanos(first, 5),
        nanos(first + 1_000, 0)
    );
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-raw", &push, &format!("{url}/loki/api/v1/push")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "204");
    let web = exported(&server, "web", first);
    assert_eq!(web.len(), 2, "{web:?}");
    assert_eq!(
        web[0]["ts"],
        "2026-12-01T00:00:00.000000005Z".replace("2026-12-01T00:00:00.000", &iso(first)[..23])
    );
    assert_eq!(web[0]["line"], "GET /a");
    assert_eq!(
        web[0]["labels"],
        serde_json::json!({"job": "web", "level": "info"})
    );
    assert_eq!(web[1]["metadata"], serde_json::json!({"user": "u1"}));

    // Protobuf and snappy, as Promtail and Alloy send it.
    let got = run("loki_push.py", &[&url, &nanos(first, 0)]);
    assert_eq!(got["sent"]["status"], 204, "{got}");
    assert_eq!(got["bad"]["status"], 400, "{got}");
    assert!(
        got["bad"]["body"].as_str().unwrap().contains("not snappy"),
        "{got}"
    );
    assert!(
        got["bad"]["type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"),
        "{got}"
    );
    let checkout = exported(&server, "checkout", first);
    let lines: Vec<&str> = checkout
        .iter()
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["paid order 1", "paid order 2"]);
    assert_eq!(
        checkout[1]["ts"],
        format!("{}123456Z", &iso(first + 1_000)[..23])
    );
    assert_eq!(checkout[1]["labels"]["env"], "prod");
    assert_eq!(checkout[1]["metadata"]["trace_id"], "abc");
    // A stream without service_name goes by job, made a series name.
    let worker = exported(&server, "worker_1", first);
    assert_eq!(worker.len(), 1, "{worker:?}");
    // Whole seconds are written as such (RFC 3339 with as many digits as the time needs).
    assert_eq!(worker[0]["ts"], format!("{}Z", &iso(first + 2_000)[..19]));

    // Refusals are plain text and store nothing: a bad entry refuses the whole push, other streams too.
    for (body, says) in [
        (
            r#"{"streams":[{"stream":{"job":"web"},"values":[["1","x"]]}]}"#.to_string(),
            "entry 1: ",
        ),
        (
            format!(
                r#"{{"streams":[{{"stream":{{"job":"web"}},"values":[["{}","ok"]]}},{{"stream":{{"job":"web"}},"values":[["x","y"]]}}]}}"#,
                nanos(first, 0)
            ),
            "entry 2: the timestamp",
        ),
        (
            r#"{"streams":[{"values":[[1,2]]}]}"#.to_string(),
            "entry 1: expected",
        ),
        ("[]".to_string(), "not a Loki push"),
    ] {
        let r = request(
            server.addr,
            "POST",
            "/loki/api/v1/push",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status / 100, 4, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    assert_eq!(exported(&server, "web", first).len(), 2);
}

#[test]
fn the_opentelemetry_sdks_otlp_exporter_writes_log_records_at_their_time() {
    const TEST: &str = "the_opentelemetry_sdks_otlp_exporter_writes_log_records_at_their_time";
    if !python_has(
        TEST,
        "opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http",
        "opentelemetry-sdk opentelemetry-exporter-otlp-proto-http",
    ) {
        return;
    }
    let tmp = TempDir::new("otlp");
    let server = Server::start(tmp.path(), FAST);
    let first = now_ms() / 1000 * 1000 + 2_000;
    let url = format!("http://{}", server.addr);
    let got = run("otlp_logs.py", &[&url, &nanos(first, 0)]);
    assert_eq!(
        got["results"],
        serde_json::json!(["SUCCESS", "SUCCESS", "SUCCESS", "SUCCESS"]),
        "{got}"
    );
    // service.name "Checkout" names the series; each record at its time, its parts as JSON.
    let checkout = exported(&server, "checkout", first);
    assert_eq!(checkout.len(), 3, "{checkout:?}");
    for (i, r) in checkout.iter().enumerate() {
        assert_eq!(
            r["ts"],
            format!("{}Z", &iso(first + i as i64 * 1000)[..19]),
            "{r}"
        );
        assert_eq!(r["severity"], "INFO", "{r}");
        assert_eq!(r["severity_number"], 9, "{r}");
        assert_eq!(r["attributes"]["order.id"], i, "{r}");
        assert_eq!(r["resource"]["host.name"], "web1", "{r}");
        assert_eq!(
            r["scope"],
            serde_json::json!({"name": "shop", "version": "1.2"}),
            "{r}"
        );
    }
    assert_eq!(checkout[0]["body"], "paid order 0");
    assert_eq!(checkout[1]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(checkout[1]["span_id"], "b7ad6b7169203331");
    assert_eq!(
        checkout[2]["body"],
        serde_json::json!({"order": 2, "items": [1, 2]})
    );
    // A record with only an observed time is stored at that time.
    let billing = exported(&server, "billing", first);
    assert_eq!(billing.len(), 1, "{billing:?}");
    assert_eq!(billing[0]["ts"], format!("{}Z", &iso(first + 3_000)[..19]));

    // OTLP's JSON encoding, answered in JSON.
    let body = format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"checkout"}}}}]}},
        "scopeLogs":[{{"logRecords":[{{"timeUnixNano":"{}","severityText":"WARN","body":{{"stringValue":"json"}},
        "attributes":[{{"key":"n","value":{{"intValue":"42"}}}},{{"key":"b","value":{{"bytesValue":"aGk="}}}}],
        "traceId":"5b8efff798038103d269b633813fc60c"}}]}}]}}]}}"#,
        nanos(first + 4_000, 0)
    );
    let json = [("Content-Type", "application/json")];
    let r = request(server.addr, "POST", "/v1/logs", &json, body.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({}));
    let checkout = exported(&server, "checkout", first);
    assert_eq!(checkout.len(), 4);
    assert_eq!(
        checkout[3]["attributes"],
        serde_json::json!({"n": 42, "b": "aGk="})
    );
    assert_eq!(checkout[3]["trace_id"], "5b8efff798038103d269b633813fc60c");

    // Refusals carry a google.rpc.Status in the request's encoding, and store nothing.
    for (body, says) in [
        ("{\"resourceLogs\": 5}", "expected an array of objects"),
        ("[]", "expected an object"),
        ("{\"resourceLogs\": [[null, null]]}", "expected an object"),
        (
            "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[[]]}]}]}",
            "expected an object",
        ),
        (
            "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"timeUnixNano\":\"-1\"}]}]}]}",
            "not a 64-bit unsigned integer",
        ),
        (
            "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"traceId\":\"xyz\"}]}]}]}",
            "is not hex",
        ),
    ] {
        let r = request(server.addr, "POST", "/v1/logs", &json, body.as_bytes()).unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["code"], 3, "{}", r.text());
        assert!(
            r.json()["message"].as_str().unwrap().contains(says),
            "{}",
            r.text()
        );
    }
    let proto = [("Content-Type", "application/x-protobuf")];
    let r = request(server.addr, "POST", "/v1/logs", &proto, b"\xff\xff\xff").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert!(String::from_utf8_lossy(&r.body).contains("not an OTLP ExportLogsServiceRequest"));
    assert_eq!(exported(&server, "checkout", first).len(), 4);
}
