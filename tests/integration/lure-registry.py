#!/usr/bin/env python3
"""A registry that a user might run to collect the site's password, for tests only: every
request is logged (method, path, Authorization header) and answered 401 with a Basic
challenge, so a client that holds credentials for any registry sends them on its retry.
HEAD of a manifest (what `vmhpc slurm prolog` asks as the job's user) is answered 200 with a
made-up digest, so that the job gets as far as its node daemon.

usage: lure-registry.py BIND PORT_FILE LOG
"""
import http.server
import os
import sys

bind, port_file, log_path = sys.argv[1:4]
DIGEST = "sha256:" + "ab" * 32


class Lure(http.server.BaseHTTPRequestHandler):
    def note(self):
        with open(log_path, "a") as log:
            log.write("%s %s AUTH=%s\n" % (self.command, self.path,
                                           self.headers.get("Authorization", "-")))

    def do_HEAD(self):
        self.note()
        if "/manifests/" in self.path and not self.headers.get("Authorization"):
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Docker-Content-Digest", DIGEST)
            self.send_header("Content-Length", "2")
            self.end_headers()
            return
        self.challenge()

    def do_GET(self):
        self.note()
        self.challenge()

    def challenge(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="lure"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# The port file appears only once the server listens.
server = http.server.HTTPServer((bind, 0), Lure)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
