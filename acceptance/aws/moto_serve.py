"""`moto_server`, tied to the lifetime of the process that started it.

Usage: python moto_serve.py -H 127.0.0.1 -p PORT   (the same arguments as moto_server)

The launcher (acceptance/src/aws.rs) keeps our stdin open as a pipe and never
writes to it. When the launcher exits in any way, including SIGKILL or an
abort that skips destructors, the kernel closes the pipe and we exit too, so
moto can never outlive the test or `local-cloud` that owns it. SIGTERM and
SIGINT are handled by moto itself (they end `run_simple`).

Everything runs in this one process (werkzeug's threaded server, no reloader),
so the pid the launcher holds is the whole server.

Two gaps of moto are closed here, so that the local cloud answers as AWS does:

- EKS: DescribeCluster answers with moto's fake endpoint and a random non-PEM
  CA. When TRELLIS_EKS_CLUSTERS names a file, a cluster listed in it is
  described with the endpoint and CA given there (JSON:
  {"<cluster>": {"endpoint": "https://...", "certificateAuthorityPem": "-----BEGIN CERTIFICATE-----..."}},
  and the CA is described as EKS does, base64 of the PEM).
  The file is read at each call, so the launcher can write it once the API
  server that stands in for the cluster is up, after moto was seeded.
- STS: moto finds the service and the caller of a request in its Authorization
  header only, so a presigned GetCallerIdentity (what an EKS token is, signed
  in the query) reaches S3's ListBuckets instead. Such a request gets the
  Authorization header its query stands for. moto checks no signature either way.

And one thing moto cannot do at all, for tests of what a client does when EC2
refuses: when TRELLIS_EC2_FAULTS names a file, an EC2 action listed in it
({"<Action>": {"code": "...", "message": "..."}}, read at each call) is
answered with that EC2 error, HTTP 400, without reaching moto.
"""

import base64
import io
import json
import os
import sys
import threading
from urllib.parse import parse_qs

import moto.server
from moto.eks.models import EKSBackend

EKS_CLUSTERS_ENV = "TRELLIS_EKS_CLUSTERS"
EC2_FAULTS_ENV = "TRELLIS_EC2_FAULTS"


def exit_when_parent_is_gone() -> None:
    # An empty read means EOF: the write end closed, the owner is gone. A raw
    # os.read, not sys.stdin: a daemon thread blocked inside the buffered
    # reader makes interpreter shutdown abort (SIGABRT) when moto exits first.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    # os._exit, not sys.exit: this is not the main thread, and the main thread
    # is blocked in the server loop.
    os._exit(0)


def describe_clusters_as_configured() -> None:
    """DescribeCluster with the endpoint and CA the launcher configured (see the module doc)."""
    path = os.environ.get(EKS_CLUSTERS_ENV)
    if not path:
        return
    describe = EKSBackend.describe_cluster

    def describe_cluster(self, name):
        cluster = describe(self, name)
        # Not written yet: moto's own values, as right after seeding.
        configured = read_json(path).get(name)
        if configured:
            cluster.endpoint = configured["endpoint"]
            pem = configured["certificateAuthorityPem"].encode("utf-8")
            cluster.certificate_authority = {"data": base64.b64encode(pem).decode("ascii")}
        return cluster

    EKSBackend.describe_cluster = describe_cluster


def read_json(path):
    """The file's JSON object, or an empty one while it is not written."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def ec2_fault(environ):
    """The fault configured for this request's EC2 action, if any (see the module doc)."""
    path = os.environ.get(EC2_FAULTS_ENV)
    if not path or "/ec2/" not in environ.get("HTTP_AUTHORIZATION", ""):
        return None
    faults = read_json(path)
    if not faults:
        return None
    # EC2's query API sends the action in the form body; it is read here and
    # put back for moto.
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    form = parse_qs(body.decode("utf-8", "replace"))
    action = (form.get("Action") or parse_qs(environ.get("QUERY_STRING", "")).get("Action") or [""])[0]
    return faults.get(action)


def ec2_error(fault, start_response):
    """EC2's error response: the shape the SDKs parse the code and message from."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Errors><Error><Code>{fault['code']}</Code><Message>{fault['message']}</Message></Error>"
        "</Errors><RequestID>trellis-injected-fault</RequestID></Response>"
    ).encode("utf-8")
    start_response("400 Bad Request", [("Content-Type", "text/xml;charset=UTF-8"), ("Content-Length", str(len(xml)))])
    return [xml]


class LocalCloudApplication(moto.server.DomainDispatcherApplication):
    """moto's dispatcher, which also routes presigned STS requests and answers
    with injected EC2 faults (see the module doc)."""

    def __call__(self, environ, start_response):
        fault = ec2_fault(environ)
        if fault:
            return ec2_error(fault, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        credential = query.get("X-Amz-Credential", [""])[0]
        if "HTTP_AUTHORIZATION" not in environ and credential.split("/")[3:4] == ["sts"]:
            signed = query.get("X-Amz-SignedHeaders", [""])[0]
            signature = query.get("X-Amz-Signature", [""])[0]
            environ["HTTP_AUTHORIZATION"] = (
                f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={signature}"
            )
        return super().__call__(environ, start_response)


if __name__ == "__main__":
    threading.Thread(target=exit_when_parent_is_gone, name="parent-watch", daemon=True).start()
    describe_clusters_as_configured()
    # moto.server.main builds its application from this name.
    moto.server.DomainDispatcherApplication = LocalCloudApplication
    moto.server.main(sys.argv[1:])
