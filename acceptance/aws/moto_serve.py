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

Two things moto cannot do at all. EKS add-ons (CreateAddon, DescribeAddon,
ListAddons, DeleteAddon) are not implemented; they are served here from memory,
as EKS answers them (JSON, ResourceNotFoundException as 404 with
x-amzn-ErrorType), except that a deleted add-on is gone at once where EKS shows
it DELETING for a while. And, for tests of what a client does when EC2
refuses: when TRELLIS_EC2_FAULTS names a file, an EC2 action listed in it
({"<Action>": {"code": "...", "message": "..."}}, read at each call) is
answered with that EC2 error, HTTP 400, without reaching moto.
"""

import base64
import datetime
import io
import json
import os
import re
import sys
import threading
from http import HTTPStatus
from urllib.parse import parse_qs, unquote

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


def refuse_deleting_used_subnets() -> None:
    """DeleteSubnet of a subnet that still holds network interfaces fails with
    DependencyViolation, as in EC2; moto deletes it and leaves the ENIs dangling."""
    from moto.ec2.exceptions import DependencyViolationError
    from moto.ec2.models.subnets import SubnetBackend

    delete = SubnetBackend.delete_subnet

    def delete_subnet(self, subnet_id):
        if any(eni.subnet.id == subnet_id for eni in self.enis.values()):
            raise DependencyViolationError(f"The subnet '{subnet_id}' has dependencies and cannot be deleted.")
        return delete(self, subnet_id)

    SubnetBackend.delete_subnet = delete_subnet


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
    return respond(start_response, 400, "text/xml;charset=UTF-8", xml)


ADDON_PATH = re.compile(r"^/clusters/([^/]+)/addons(?:/([^/]+))?/?$")


class Addons:
    """EKS add-ons by cluster, in memory (see the module doc)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_cluster = {}

    @staticmethod
    def is_addon_call(environ):
        return "/eks/" in environ.get("HTTP_AUTHORIZATION", "") and ADDON_PATH.match(environ.get("PATH_INFO", ""))

    def __call__(self, environ, start_response):
        match = ADDON_PATH.match(environ["PATH_INFO"])
        cluster, name = unquote(match.group(1)), match.group(2) and unquote(match.group(2))
        method = environ["REQUEST_METHOD"]
        credential = environ.get("HTTP_AUTHORIZATION", "").split("Credential=")[-1].split("/")
        region = credential[2] if len(credential) > 2 else "us-east-1"
        with self.lock:
            addons = self.by_cluster.setdefault(cluster, {})
            if method == "GET" and name is None:
                return json_response(start_response, 200, {"addons": sorted(addons), "nextToken": None})
            if method == "POST" and name is None:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                request = json.loads(environ["wsgi.input"].read(length) or b"{}")
                name = request.get("addonName", "")
                if name in addons:
                    return eks_error(start_response, "ResourceInUseException", f"Addon already exists: {name}", 409)
                now = datetime.datetime.now(datetime.timezone.utc).timestamp()
                addons[name] = {
                    "addonName": name,
                    "clusterName": cluster,
                    "status": "ACTIVE",
                    "addonVersion": request.get("addonVersion") or "v1.0.0-eksbuild.1",
                    "addonArn": f"arn:aws:eks:{region}:123456789012:addon/{cluster}/{name}/local",
                    "createdAt": now,
                    "modifiedAt": now,
                    "health": {"issues": []},
                    "tags": request.get("tags") or {},
                }
                return json_response(start_response, 200, {"addon": addons[name]})
            if name not in addons:
                return eks_error(start_response, "ResourceNotFoundException", f"No addon: {name} found in cluster: {cluster}", 404)
            if method == "GET":
                return json_response(start_response, 200, {"addon": addons[name]})
            if method == "DELETE":
                addon = dict(addons.pop(name), status="DELETING")
                return json_response(start_response, 200, {"addon": addon})
        return eks_error(start_response, "InvalidRequestException", f"{method} is not served here", 400)


def respond(start_response, status, content_type, data, headers=()):
    """One WSGI answer: status with its reason phrase, the body's type and length."""
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", content_type), ("Content-Length", str(len(data))), *headers],
    )
    return [data]


def json_response(start_response, status, body):
    return respond(start_response, status, "application/json", json.dumps(body).encode("utf-8"))


def eks_error(start_response, error_type, message, status):
    """An EKS error: its type in x-amzn-ErrorType, as the SDKs read it."""
    data = json.dumps({"message": message}).encode("utf-8")
    return respond(start_response, status, "application/json", data, [("x-amzn-ErrorType", error_type)])


ADDONS = Addons()


class LocalCloudApplication(moto.server.DomainDispatcherApplication):
    """moto's dispatcher, which also routes presigned STS requests and answers
    with injected EC2 faults (see the module doc)."""

    def __call__(self, environ, start_response):
        fault = ec2_fault(environ)
        if fault:
            return ec2_error(fault, start_response)
        if Addons.is_addon_call(environ):
            return ADDONS(environ, start_response)
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
    refuse_deleting_used_subnets()
    # moto.server.main builds its application from this name.
    moto.server.DomainDispatcherApplication = LocalCloudApplication
    moto.server.main(sys.argv[1:])
