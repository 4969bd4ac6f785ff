#!/usr/bin/env python3
"""A minimal token service for Docker distribution's `auth: token` (the registry's Bearer
flow), for tests only: GET /token?service=S&scope=repository:NAME:ACTIONS with Basic
credentials USER:PASSWORD answers {"token": JWT}; the JWT is signed RS256 by `openssl dgst`
with KEY and carries CERT in its x5c header, which the registry checks against its
rootcertbundle. Wrong or missing credentials get 401.

usage: token-server.py PORT_FILE KEY CERT_DER ISSUER USER:PASSWORD[=PREFIX,...]...

Each user may be limited to the repositories that start with one of its PREFIXes (the rest
of the scope is left out of its token, which the registry then refuses); a user without
"=" gets whatever it asks. TOKEN_BIND (default 127.0.0.1) is the address to listen on.
"""
import base64
import http.server
import json
import os
import subprocess
import sys
import time
import urllib.parse

port_file, key, cert_der, issuer = sys.argv[1:5]
users = {}  # "user:password" -> None (everything) or a list of repository prefixes
for spec in sys.argv[5:]:
    userpass, has_acl, prefixes = spec.partition("=")
    users[userpass] = prefixes.split(",") if has_acl else None


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims):
    header = {"typ": "JWT", "alg": "RS256",
              "x5c": [base64.b64encode(open(cert_der, "rb").read()).decode()]}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                         input=signing_input.encode(), capture_output=True, check=True).stdout
    return signing_input + "." + b64url(sig)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        auth = self.headers.get("Authorization", "")
        userpass = None
        if auth.startswith("Basic "):
            try:
                userpass = base64.b64decode(auth[6:]).decode()
            except ValueError:
                userpass = None
        if url.path != "/token":
            self.send_error(404)
            return
        if userpass not in users:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = users[userpass]
            if allowed is not None and not any(name.startswith(p) for p in allowed):
                continue
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": issuer, "sub": userpass.split(":")[0],
                  "aud": query.get("service", [""])[0], "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        body = json.dumps({"token": sign(claims), "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer((os.environ.get("TOKEN_BIND", "127.0.0.1"), 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
