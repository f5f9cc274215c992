"""Writes to hourglass with the official Elasticsearch client's bulk helper, as an application would.

usage: elastic_bulk.py URL FIRST_MS
Sends five documents for the index "web" and three for "API-Logs", each with `@timestamp` FIRST_MS + i s, then a
`delete`, which must be refused whole. Prints the helper's results as JSON.
"""
import datetime
import json
import sys

from elasticsearch import Elasticsearch, helpers

url, first = sys.argv[1], int(sys.argv[2])
es = Elasticsearch(url, request_timeout=10, max_retries=0)


def at(i):
    t = datetime.datetime.fromtimestamp((first + i * 1000) / 1000, datetime.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


docs = [{"_index": "web", "_source": {"@timestamp": at(i), "message": f"web {i}", "n": i}} for i in range(5)]
docs += [{"_index": "API-Logs", "_id": f"a{i}", "_source": {"@timestamp": at(i), "message": f"api {i}"}} for i in range(3)]
ok, errors = helpers.bulk(es, docs)
refused = None
try:
    helpers.bulk(es, [{"_index": "web", "_source": {"@timestamp": at(0)}}, {"_op_type": "delete", "_index": "web", "_id": "1"}])
except Exception as e:  # the client's ApiError: status and Elasticsearch's error type
    refused = {"status": e.meta.status, "type": e.error, "reason": str(e)}
print(json.dumps({"info": es.info()["version"]["number"], "ok": ok, "errors": errors, "refused": refused}))
