#!/usr/bin/env python3
"""Helpers of benches/compare.sh (standard library only).

  compare_world.py https --cert C --key K --root DIR [--listen 127.0.0.1:443]
      HTTPS server for the MTA-STS policy hosts: GET /.well-known/mta-sts.txt on host H answers
      200, Content-Type text/plain, with the bytes of DIR/H.txt (404 when there is no such
      file); prints "listening" once bound.

  compare_world.py ask --addr 127.0.0.1:PORT [--map postfix] [--then KEY] KEY...
      For each KEY: a new socketmap connection (socketmap_table(5)), the request
      "<map> KEY", then, on the same connection, "<map> THEN" (when --then is given).
      Prints one tab-separated line per KEY: the key as given, the reply payload, the reply
      to THEN ("-" when --then is absent). A connection closed without a reply prints
      "closed". KEY may be "hex:<hex digits>" (raw bytes) or "long:<N>" (N letters "a").
"""

import argparse
import http.server
import os
import socket
import ssl
import sys


def serve_https(args):
    root = args.root

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            host = (self.headers.get("Host") or "").split(":")[0].lower().rstrip(".")
            path = os.path.join(root, host + ".txt")
            if self.path != "/.well-known/mta-sts.txt" or "/" in host or not os.path.isfile(path):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                return
            with open(path, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *a):
            sys.stderr.write("https: %s %s\n" % (self.headers.get("Host"), fmt % a))

    host, port = args.listen.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("listening", flush=True)
    srv.serve_forever()


def key_bytes(spec):
    if spec.startswith("hex:"):
        return bytes.fromhex(spec[4:])
    if spec.startswith("long:"):
        return b"a" * int(spec[5:])
    return spec.encode("utf-8")


def netstring(payload):
    return b"%d:%s," % (len(payload), payload)


def read_reply(sock):
    """One netstring reply, or None when the peer closes (or resets) first."""
    buf = b""
    try:
        while True:
            colon = buf.find(b":")
            if colon > 0:
                n = int(buf[:colon])
                if len(buf) >= colon + 1 + n + 1:
                    return buf[colon + 1:colon + 1 + n].decode("utf-8", "replace")
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except (ConnectionError, socket.timeout):
        return None


def ask(args):
    host, port = args.addr.rsplit(":", 1)
    for spec in args.keys:
        with socket.create_connection((host, int(port)), timeout=args.timeout) as s:
            s.sendall(netstring(args.map.encode() + b" " + key_bytes(spec)))
            first = read_reply(s)
            then = "-"
            if args.then is not None:
                if first is None:
                    then = "closed"
                else:
                    try:
                        s.sendall(netstring(args.map.encode() + b" " + key_bytes(args.then)))
                        then = read_reply(s)
                    except OSError:
                        then = None
                    then = "closed" if then is None else then
            shown = spec if len(spec) <= 40 else spec[:37] + "..."
            print("%s\t%s\t%s" % (shown, "closed" if first is None else first, then), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("https")
    h.add_argument("--cert", required=True)
    h.add_argument("--key", required=True)
    h.add_argument("--root", required=True)
    h.add_argument("--listen", default="127.0.0.1:443")
    a = sub.add_parser("ask")
    a.add_argument("--addr", required=True)
    a.add_argument("--map", default="postfix")
    a.add_argument("--then")
    a.add_argument("--timeout", type=float, default=20.0)
    a.add_argument("keys", nargs="+")
    args = p.parse_args()
    if args.cmd == "https":
        serve_https(args)
    else:
        ask(args)


if __name__ == "__main__":
    main()
