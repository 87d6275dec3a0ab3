#!/usr/bin/python3
"""Captures the fuzz_acme seed corpus from a real pebble (run once by hand; the output is
committed in tests/fuzz/corpus/acme/, CI does not run this). Needs pebble (scripts/install-deps.sh,
test group) and python3-cryptography.

It walks RFC 8555 with pebble in the order AcmeRenewer asks (directory GET, newNonce HEAD,
newAccount, newOrder, each authorization and its http-01 challenge, authorization polls,
finalize, order polls, certificate download) and writes pebble's answers as fuzz_acme inputs:
a setup byte, then each raw HTTP response separated by "\\n=====\\n". Pebble's https URLs become
http://127.0.0.1:PPPPP (the harness puts its own port there), and Content-Length is recomputed.

    tests/fuzz/acme_seeds.py tests/fuzz/corpus/acme
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

SEPARATOR = b"\n=====\n"
EAB_KID = "fuzz-eab-kid"
EAB_KEY = "ZnV6ei1lYWItaG1hYy1rZXktMzItYnl0ZXMtbG9uZyE"  # as in fuzz_acme.cpp
NAMES = ["web.internal", "www.internal"]
IPS = ["127.0.0.1"]


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_files(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz seed pebble CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    paths = {k: os.path.join(directory, k) for k in ("ca.pem", "cert.pem", "key.pem")}
    with open(paths["ca.pem"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert.pem"], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths["key.pem"], "wb") as f:
        f.write(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


class Pebble:
    def __init__(self, directory, eab=False, env=None):
        self.dir = directory
        self.port = free_port()
        tls = tls_files(directory)
        self.ca = tls["ca.pem"]
        conf = {"pebble": {
            "listenAddress": "127.0.0.1:%d" % self.port,
            "managementListenAddress": "127.0.0.1:%d" % free_port(),
            "certificate": tls["cert.pem"], "privateKey": tls["key.pem"],
            "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": eab, "certificateValidityPeriod": 3600}}
        if eab:
            conf["pebble"]["externalAccountMACKeys"] = {EAB_KID: EAB_KEY}
        path = os.path.join(directory, "pebble.json")
        with open(path, "w") as f:
            json.dump(conf, f)
        environment = dict(os.environ, PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1",
                           PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        environment.update(env or {})
        self.log = open(os.path.join(directory, "pebble.log"), "wb")
        self.proc = subprocess.Popen(["pebble", "-config", path, "-strict=false"], env=environment,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.origin = "https://127.0.0.1:%d" % self.port
        deadline = time.monotonic() + 20
        while True:
            try:
                self.request("GET", "/dir")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("pebble did not start")
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()

    def request(self, method, url, body=None, headers=None):
        """One request; returns (status, [(name, value)], body bytes)."""
        if url.startswith(self.origin):
            url = url[len(self.origin):]
        ctx = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, resp.reason, list(resp.msg.items()), data

    def raw(self, answer, head=False):
        """The answer as fuzz_acme replays it: pebble's URLs made the harness's."""
        status, reason, headers, body = answer
        def fix(text):
            return text.replace(self.origin, "http://127.0.0.1:PPPPP")
        body = fix(body.decode("latin-1")).encode("latin-1")
        out = "HTTP/1.1 %d %s\r\n" % (status, reason)
        for name, value in headers:
            if name.lower() in ("content-length", "transfer-encoding"):
                continue
            out += "%s: %s\r\n" % (name, fix(value))
        out += "Content-Length: %d\r\n\r\n" % (0 if head else len(body))
        return out.encode("latin-1") + (b"" if head else body)


def header(answer, name):
    for k, v in answer[2]:
        if k.lower() == name.lower():
            return v
    return ""


def body_json(answer):
    return json.loads(answer[3]) if answer[3] else {}


class Client:
    """RFC 8555 in AcmeRenewer's order, recording every answer."""

    def __init__(self, pebble, eab=False):
        self.pebble = pebble
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {"crv": "P-256", "kty": "EC", "x": b64u(numbers.x.to_bytes(32, "big")),
                    "y": b64u(numbers.y.to_bytes(32, "big"))}
        self.thumbprint = b64u(hashlib.sha256(json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()).digest())
        self.eab = eab
        self.kid = None
        self.nonces = []
        self.answers = []  # raw, in order
        self.directory = None

    def record(self, answer, head=False):
        self.answers.append(self.pebble.raw(answer, head))
        return answer

    def get_directory(self):
        self.directory = body_json(self.record(self.pebble.request("GET", "/dir")))

    def nonce(self):
        if self.nonces:
            return self.nonces.pop()
        answer = self.record(self.pebble.request("HEAD", self.directory["newNonce"]), head=True)
        return header(answer, "Replay-Nonce")

    def post(self, url, payload, use_jwk=False, nonce=None, record=True):
        protected = {"alg": "ES256", "nonce": nonce or self.nonce(), "url": url}
        if use_jwk:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = self.kid
        p64 = b64u(json.dumps(protected))
        pl64 = "" if payload is None else b64u(json.dumps(payload))
        der = self.key.sign((p64 + "." + pl64).encode(), ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        sig = b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        body = json.dumps({"protected": p64, "payload": pl64, "signature": sig})
        answer = self.pebble.request("POST", url, body, {"Content-Type": "application/jose+json"})
        if header(answer, "Replay-Nonce"):
            self.nonces.append(header(answer, "Replay-Nonce"))
        if record:
            self.record(answer)
        return answer

    def new_account(self):
        payload = {"termsOfServiceAgreed": True, "contact": ["mailto:ops@example.org"]}
        if self.eab:
            url = self.directory["newAccount"]
            p64 = b64u(json.dumps({"alg": "HS256", "kid": EAB_KID, "url": url}))
            pl64 = b64u(json.dumps(self.jwk, sort_keys=True, separators=(",", ":")))
            mac = hmac.new(b64u_decode(EAB_KEY), (p64 + "." + pl64).encode(), hashlib.sha256).digest()
            payload["externalAccountBinding"] = {"protected": p64, "payload": pl64, "signature": b64u(mac)}
        answer = self.post(self.directory["newAccount"], payload, use_jwk=True)
        self.kid = header(answer, "Location")
        return answer

    def new_order(self, names=NAMES, ips=IPS):
        ids = [{"type": "dns", "value": n} for n in names] + [{"type": "ip", "value": i} for i in ips]
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        payload = {"identifiers": ids, "notBefore": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "notAfter": (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        return self.post(self.directory["newOrder"], payload)

    def authorize(self, order):
        polls = []
        for url in order["authorizations"]:
            authz = body_json(self.post(url, None))
            if authz["status"] == "valid":
                continue
            chosen = [c for c in authz["challenges"] if c["type"] == "http-01"][-1]
            status = chosen["status"]
            if status == "pending":
                status = body_json(self.post(chosen["url"], {}))["status"]
            if status != "valid":
                polls.append(url)
        for url in polls:
            for _ in range(100):
                if body_json(self.post(url, None))["status"] == "valid":
                    break
                time.sleep(0.05)

    def finish(self, order_answer, csr_der):
        order = body_json(order_answer)
        order_url = header(order_answer, "Location")
        if order["status"] == "pending":
            self.authorize(order)
        current = body_json(self.post(order["finalize"], {"csr": b64u(csr_der)}))
        for _ in range(100):
            if current.get("status") == "valid":
                break
            time.sleep(0.05)
            current = body_json(self.post(order_url, None))
        return self.post(current["certificate"], None)


def csr_der(names=NAMES, ips=IPS):
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
           .add_extension(x509.SubjectAlternativeName(san), critical=False).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


def write(out_dir, name, setup, answers):
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(bytes([setup]) + SEPARATOR.join(answers))
    print("wrote %s (%d answers)" % (name, len(answers)))


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # A whole issuance, then a second one by the same account; Link alternate chains on.
        pebble = Pebble(tmp, env={"PEBBLE_ALTERNATE_ROOTS": "1"})
        try:
            c = Client(pebble)
            c.get_directory()
            c.new_account()
            c.finish(c.new_order(), csr_der())
            first = list(c.answers)
            chain = first[-1].split(b"\r\n\r\n", 1)[1].decode()
            rfc_examples(out_dir, chain, chain[:chain.find("-----END CERTIFICATE-----") + 26])
            write(out_dir, "pebble-issued", 0x00, first)
            write(out_dir, "pebble-issued-preferred-chain", 0x02, first + [pebble.raw(pebble.request(
                "GET", "/dir"))])  # the alternate download is answered with anything
            c.finish(c.new_order(), csr_der())
            write(out_dir, "pebble-issued-twice", 0x08, c.answers)

            # Pebble's problem documents, each where the renewer meets it.
            bad = Client(pebble)
            bad.get_directory()
            bad.nonce()  # the renewer's HEAD newNonce; its nonce is not the one sent
            bad_nonce = bad.post(bad.directory["newAccount"], {"termsOfServiceAgreed": True}, use_jwk=True,
                                 nonce="bm9uY2Utbm90LWlzc3VlZA", record=False)
            bad.record(bad_nonce)
            bad.new_account()
            bad.finish(bad.new_order(), csr_der())
            write(out_dir, "pebble-bad-nonce-then-issued", 0x00, bad.answers)

            rej = Client(pebble)
            rej.get_directory()
            rej.new_account()
            rej.new_order(names=["bad..name.internal"], ips=[])
            write(out_dir, "pebble-rejected-identifier", 0x00, rej.answers)

            early = Client(pebble)
            early.get_directory()
            early.new_account()
            order_answer = early.new_order()
            order = body_json(order_answer)
            early.post(order["finalize"], {"csr": b64u(csr_der())})  # orderNotReady
            write(out_dir, "pebble-order-not-ready", 0x00, early.answers)

            gone = Client(pebble)
            gone.get_directory()
            gone.kid = pebble.origin + "/my-account/does-not-exist"
            gone.new_order()  # accountDoesNotExist
            write(out_dir, "pebble-account-does-not-exist", 0x00, gone.answers)
        finally:
            pebble.stop()

    with tempfile.TemporaryDirectory() as tmp:
        pebble = Pebble(tmp, eab=True)
        try:
            c = Client(pebble, eab=True)
            c.get_directory()
            c.new_account()
            c.finish(c.new_order(), csr_der())
            write(out_dir, "pebble-eab-issued", 0x01, c.answers)
            plain = Client(pebble)
            plain.get_directory()
            write(out_dir, "pebble-eab-required", 0x00, plain.answers)
            refused = Client(pebble)
            refused.get_directory()
            refused.new_account()  # no binding: externalAccountRequired
            write(out_dir, "pebble-eab-missing", 0x01, refused.answers)
        finally:
            pebble.stop()


def http_answer(status, reason, headers, body=b"", nonce=True):
    if isinstance(body, str):
        body = body.encode()
    out = "HTTP/1.1 %d %s\r\n" % (status, reason)
    if nonce:
        out += "Replay-Nonce: %s\r\n" % b64u(os.urandom(16))
    for name, value in headers:
        out += "%s: %s\r\n" % (name, value)
    out += "Content-Length: %d\r\n\r\n" % len(body)
    return out.encode() + body


def rfc_examples(out_dir, chain_pem, leaf_pem):
    """RFC 8555's (and RFC 9773's) example objects, in the renewer's order of requests."""
    base = "http://127.0.0.1:PPPPP/acme"
    js = [("Content-Type", "application/json")]
    problem = [("Content-Type", "application/problem+json")]
    index = ("Link", '<%s/directory>;rel="index"' % base)
    directory = {"newNonce": base + "/new-nonce", "newAccount": base + "/new-account",
                 "newOrder": base + "/new-order", "newAuthz": base + "/new-authz",
                 "revokeCert": base + "/revoke-cert", "keyChange": base + "/key-change",
                 "meta": {"termsOfService": base + "/terms/2017-5-30", "website": "https://www.example.com/",
                          "caaIdentities": ["example.com"], "externalAccountRequired": False}}
    start = [
        http_answer(200, "OK", js, json.dumps(directory, indent=2), nonce=False),
        http_answer(200, "OK", [("Cache-Control", "no-store"), index]),
        http_answer(201, "Created", js + [index, ("Location", base + "/acct/evOfKhNU60wg")], json.dumps({
            "status": "valid", "contact": ["mailto:cert-admin@example.org", "mailto:admin@example.org"],
            "orders": base + "/acct/evOfKhNU60wg/orders"}, indent=2)),
    ]
    order = {"status": "pending", "expires": "2016-01-05T14:09:07.99Z", "notBefore": "2016-01-01T00:00:00Z",
             "notAfter": "2016-01-08T00:00:00Z",
             "identifiers": [{"type": "dns", "value": "www.example.org"}, {"type": "dns", "value": "example.org"}],
             "authorizations": [base + "/authz/PAniVnsZcis", base + "/authz/r4HqLzrSrpI"],
             "finalize": base + "/order/TOlocE8rfgo/finalize"}
    authz = {"status": "pending", "expires": "2016-01-02T14:09:30Z",
             "identifier": {"type": "dns", "value": "www.example.org"},
             "challenges": [{"type": "http-01", "status": "pending", "url": base + "/chall/prV_B7yEyA4",
                             "token": "DGyRejmCefe7v4NfDGDKfA"},
                            {"type": "dns-01", "status": "pending", "url": base + "/chall/Rg5dV14Gh1Q",
                             "token": "DGyRejmCefe7v4NfDGDKfA"}]}
    authz2 = dict(authz, identifier={"type": "dns", "value": "example.org"}, status="valid")
    challenge = {"type": "http-01", "url": base + "/chall/prV_B7yEyA4", "status": "processing",
                 "token": "DGyRejmCefe7v4NfDGDKfA"}
    valid_authz = {"status": "valid", "expires": "2018-09-09T14:09:01.13Z",
                   "identifier": {"type": "dns", "value": "www.example.org"},
                   "challenges": [{"type": "http-01", "url": base + "/chall/prV_B7yEyA4", "status": "valid",
                                   "validated": "2014-12-01T12:05:13.72Z", "token": "IlirfxKKXAsHtmzK29Pj8A"}]}
    processing = dict(order, status="processing")
    valid = dict(order, status="valid", certificate=base + "/cert/mAt3xBGaobw")
    cert = http_answer(200, "OK", [("Content-Type", "application/pem-certificate-chain"), index,
                                   ("Link", '<%s/cert/mAt3xBGaobw/1>;rel="alternate"' % base)], chain_pem)
    order_loc = ("Location", base + "/order/TOlocE8rfgo")
    flow = start + [
        http_answer(201, "Created", js + [index, order_loc], json.dumps(order, indent=2)),
        http_answer(200, "OK", js + [index], json.dumps(authz, indent=2)),
        http_answer(200, "OK", js + [index, ("Link", '<%s/authz/PAniVnsZcis>;rel="up"' % base)],
                    json.dumps(challenge, indent=2)),
        http_answer(200, "OK", js + [index], json.dumps(authz2, indent=2)),
        http_answer(200, "OK", js + [index, ("Retry-After", "0")], json.dumps(dict(authz, status="pending"))),
        http_answer(200, "OK", js + [index], json.dumps(valid_authz, indent=2)),
        http_answer(200, "OK", js + [index, order_loc, ("Retry-After", "0")], json.dumps(processing, indent=2)),
        http_answer(200, "OK", js + [index, order_loc], json.dumps(valid, indent=2)),
        cert,
    ]
    write(out_dir, "rfc8555-issued", 0x00, flow)
    write(out_dir, "rfc8555-issued-preferred-chain", 0x02, flow + [cert])

    subproblems = {"type": "urn:ietf:params:acme:error:malformed",
                   "detail": "Some of the identifiers requested were rejected",
                   "subproblems": [
                       {"type": "urn:ietf:params:acme:error:malformed",
                        "detail": "Invalid underscore in DNS name \"_example.org\"",
                        "identifier": {"type": "dns", "value": "_example.org"}},
                       {"type": "urn:ietf:params:acme:error:rejectedIdentifier",
                        "detail": "This CA will not issue for \"example.net\"",
                        "identifier": {"type": "dns", "value": "example.net"}}]}
    write(out_dir, "rfc8555-problem-subproblems", 0x00,
          start + [http_answer(403, "Forbidden", problem + [index], json.dumps(subproblems, indent=2))])
    write(out_dir, "rfc8555-rate-limited", 0x00, start + [http_answer(
        429, "Too Many Requests", problem + [index, ("Retry-After", "3600"),
                                             ("Link", '<%s/docs/rate-limits>;rel="help"' % base)],
        json.dumps({"type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": "Too many new orders recently"}))])
    write(out_dir, "rfc8555-user-action-required", 0x00, [start[0], start[1], http_answer(
        403, "Forbidden", problem + [index, ("Link", '<%s/terms/2017-6-02>;rel="terms-of-service"' % base)],
        json.dumps({"type": "urn:ietf:params:acme:error:userActionRequired",
                    "detail": "Terms of service have changed",
                    "instance": base + "/agreement/?token=W8Ih3PswD-8"}))])

    # RFC 9773: renewalInfo in the directory, a ready order, the suggested window.
    ari_dir = dict(directory, renewalInfo=base + "/renewal-info")
    ready = dict(order, status="ready", authorizations=[])
    write(out_dir, "rfc9773-renewal-info", 0x04, [
        http_answer(200, "OK", js, json.dumps(ari_dir), nonce=False), start[1], start[2],
        http_answer(201, "Created", js + [index, order_loc], json.dumps(ready)),
        http_answer(200, "OK", js + [index, order_loc], json.dumps(valid)),
        cert,
        http_answer(200, "OK", js + [("Retry-After", "21600")], json.dumps({
            "suggestedWindow": {"start": "2025-01-02T04:00:00Z", "end": "2025-01-03T04:00:00Z"},
            "explanationURL": "https://acme.example.com/docs/ari"}), nonce=False),
    ])

    # The JWS functions on their own: kid, nonce, url, payload.
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    sig = key.sign(b"fuzz", ec.ECDSA(hashes.SHA256()))
    def jws(name, kid, nonce, url, payload):
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(bytes([0x80]) + SEPARATOR.join([kid.encode(), nonce.encode(), url.encode(), payload]))
        print("wrote %s" % name)
    new_order = json.dumps({"identifiers": [{"type": "dns", "value": "www.example.org"}],
                            "notBefore": "2016-01-01T00:04:00+04:00", "notAfter": "2016-01-08T00:04:00+04:00"})
    jws("jws-new-order", base + "/acct/evOfKhNU60wg", "6S8IqOGY7eL2lsGoTZYifg", base + "/new-order", new_order.encode())
    jws("jws-new-account-public-key", "", "6S8IqOGY7eL2lsGoTZYifg", base + "/new-account", pub)
    jws("jws-signature-der", base + "/acct/1", "D8s4D2mLs8Vn-goWuPQeKA", base + "/chall/1", sig)
    jws("jws-ari-certificate", base + "/acct/1", "D8s4D2mLs8Vn-goWuPQeKA", base + "/cert/1", leaf_pem.encode())


if __name__ == "__main__":
    main()
