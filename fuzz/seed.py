#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus from the project's fixtures and examples.

Run from the repository root: `python3 fuzz/seed.py`. The corpus is committed; libFuzzer adds
what it finds to it during a run (those additions are not committed)."""
import hashlib, hmac, pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "seeds"
SECRET = b"fuzz-secret"
# The order of ReceiverType::ALL.
TYPES = ["generic", "generic-hmac", "generic-oidc", "github", "gitlab", "bitbucket", "harbor",
         "dockerhub", "quay", "gcr", "nexus", "acr", "cdevents"]


def fixture(rel):
    return (ROOT / "tests" / "fixtures" / rel).read_bytes()


def sig(alg, body):
    return hmac.new(SECRET, body, getattr(hashlib, alg)).hexdigest()


def verify_seed(kind, headers, body):
    head = "".join(f"{k}: {v}\n" for k, v in headers).encode()
    return bytes([TYPES.index(kind)]) + head + b"\n" + body


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


push = fixture("github/push.json")
json_ct = ("Content-Type", "application/json")
write("verify", "github-push", verify_seed("github", [json_ct, ("X-GitHub-Event", "push"),
      ("X-Hub-Signature-256", "sha256=" + sig("sha256", push))], push))
write("verify", "bitbucket-sha1", verify_seed("bitbucket", [json_ct, ("X-Event-Key", "repo:push"),
      ("X-Hub-Signature", "sha1=" + sig("sha1", push))], push))
write("verify", "generic-hmac-sha512", verify_seed("generic-hmac",
      [("X-Signature", "sha512=" + sig("sha512", push))], push))
write("verify", "gitlab", verify_seed("gitlab", [("X-Gitlab-Token", "fuzz-secret"),
      ("X-Gitlab-Event", "Push Hook")], b"{}"))
write("verify", "harbor", verify_seed("harbor", [("Authorization", "fuzz-secret")], b"{}"))
write("verify", "generic", verify_seed("generic", [], b""))
for kind in ["dockerhub", "quay", "acr", "nexus", "cdevents"]:
    for f in sorted((ROOT / "tests" / "fixtures" / kind).glob("*.json")):
        body = f.read_bytes()
        headers = []
        if kind == "nexus":
            headers = [("X-Nexus-Webhook-Signature", sig("sha1", body))]
        if kind == "cdevents":
            headers = [("Ce-Type", "dev.cdevents.change.merged.0.2.0"), ("Ce-Id", "1")]
        write("verify", f"{kind}-{f.stem}", verify_seed(kind, headers, body))
write("verify", "gcr-bearer", verify_seed("gcr", [("Authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")], b"{}"))
write("verify", "oidc-bearer", verify_seed("generic-oidc", [("Authorization", "Bearer a.b.c")], b""))

for f in sorted((ROOT / "config").glob("*.toml")):
    write("config", f.stem, f.read_bytes())

for i, p in enumerate(["/hook/0a1b2c", "/hook/", "/hook/%2e%2e/x?y=1#z", "http://h/hook/a",
                       "/hook/" + "a" * 64, "*"]):
    write("routes", f"path-{i}", p.encode())

for i, (peer, xff) in enumerate([(bytes([0, 10, 0, 0, 1]), b"203.0.113.9, 10.1.2.3"),
                                 (bytes([1]) + bytes(15) + b"\x01", b"2001:db8::1\n198.51.100.7"),
                                 (bytes([0, 127, 0, 0, 1]), b"unknown, ,::ffff:192.0.2.1")]):
    write("client_ip", f"xff-{i}", peer + xff)

for i, e in enumerate(["res.metadata.name == 'app' && req.ref.startsWith('refs/heads/')\0{\"ref\":\"refs/heads/main\"}",
                       "has(req.tags) && req.tags.exists(t, t.matches('^v[0-9]+'))\0{\"tags\":[\"v1\",\"x\"]}",
                       "claims.sub.split(':').size() > 2 || res.metadata.labels['app'] in ['web']\0{}",
                       "int(req.n) / 0 == 1\0{\"n\": 9223372036854775807}",
                       "'%s'.format([req])\0[1,2]"]):
    write("cel", f"expr-{i}", e.encode())
