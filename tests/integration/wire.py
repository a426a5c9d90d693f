# SPDX-License-Identifier: MIT
"""A minimal PostgreSQL v3 wire client for tests: speaks raw messages so that tests can send
exactly what drivers send (pipelines, Flush without Sync, named statements) and compare the
answers pgsteer gives with the answers a single PostgreSQL server gives."""

import base64
import hashlib
import hmac
import os
import socket
import struct


def msg(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def Query(sql):
    return msg(b"Q", cstr(sql))


def Parse(sql, name="", types=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(types)) +
               b"".join(struct.pack("!I", t) for t in types))


def Bind(stmt="", params=(), portal=""):
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            b = p if isinstance(p, bytes) else str(p).encode()
            body += struct.pack("!i", len(b)) + b
    return msg(b"B", body + struct.pack("!H", 0))


def Describe(kind, name=""):
    return msg(b"D", kind + cstr(name))


def Execute(portal="", maxrows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", maxrows))


def Close(kind, name=""):
    return msg(b"C", kind + cstr(name))


Sync = msg(b"S")
Flush = msg(b"H")
Terminate = msg(b"X")


def error_field(body, code):
    i = 0
    while i < len(body) and body[i] != 0:
        f = chr(body[i])
        j = body.index(b"\0", i + 1)
        if f == code:
            return body[i + 1:j].decode()
        i = j + 1
    return None


class WireError(Exception):
    pass


class Conn:
    def __init__(self, port, user="app", password="secret", database="app", timeout=10,
                 params=None, wrap=None):
        """`wrap`, given, turns the new socket into the one to speak on (an
        ssl.SSLContext's wrap_socket, for TLS from the first byte)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if wrap is not None:
            try:
                self.sock = wrap(self.sock)
            except BaseException:
                self.sock.close()
                raise
        self.buf = b""
        self.params = {}
        self.key = None
        p = {"user": user, "database": database}
        p.update(params or {})
        body = struct.pack("!I", 196608) + b"".join(cstr(k) + cstr(v) for k, v in p.items())
        body += b"\0"
        try:
            self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
            self._auth(user, password)
        except BaseException:
            self.sock.close()
            raise

    def _auth(self, user, password):
        while True:
            t, body = self.read()
            if t == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 0:
                    continue
                if code == 3:
                    self.send(msg(b"p", cstr(password)))
                elif code == 5:
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    self.send(msg(b"p", cstr("md5" + outer)))
                elif code == 10:
                    self.nonce = base64.b64encode(os.urandom(18)).decode()
                    self.first_bare = "n=,r=" + self.nonce
                    data = ("n,," + self.first_bare).encode()
                    self.send(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(data)) +
                                  data))
                elif code == 11:
                    sfirst = body[4:].decode()
                    attrs = dict(kv.split("=", 1) for kv in sfirst.split(","))
                    salt = base64.b64decode(attrs["s"])
                    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
                    ckey = hmac.new(salted, b"Client Key", "sha256").digest()
                    stored = hashlib.sha256(ckey).digest()
                    final_wo = "c=biws,r=" + attrs["r"]
                    auth_msg = ",".join([self.first_bare, sfirst, final_wo]).encode()
                    sig = hmac.new(stored, auth_msg, "sha256").digest()
                    proof = bytes(a ^ b for a, b in zip(ckey, sig))
                    self.send(msg(b"p", (final_wo + ",p=" +
                                         base64.b64encode(proof).decode()).encode()))
                elif code == 12:
                    pass
                else:
                    raise WireError("unsupported auth %d" % code)
            elif t == b"S":
                k, v = body.split(b"\0")[:2]
                self.params[k.decode()] = v.decode()
            elif t == b"K":
                self.key = struct.unpack("!II", body)
            elif t == b"E":
                raise WireError(error_field(body, "C") + ": " + error_field(body, "M"))
            elif t == b"Z":
                return

    def send(self, data):
        self.sock.sendall(data)

    def read(self):
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= 1 + n:
                    t, body = self.buf[:1], self.buf[5:1 + n]
                    self.buf = self.buf[1 + n:]
                    return t, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WireError("connection closed")
            self.buf += chunk

    def until_ready(self, count=1, keep_async=False):
        """Read responses until `count` ReadyForQuery messages arrived; returns a normalised
        list of (type, detail) comparable across servers."""
        out = []
        while count > 0:
            t, body = self.read()
            item = normalise(t, body)
            if item is None and not keep_async:
                continue
            out.append(item)
            if t == b"Z":
                count -= 1
        return out

    def take(self, n):
        """Read exactly n comparable messages (for Flush, which ends with no ReadyForQuery)."""
        out = []
        while len(out) < n:
            t, body = self.read()
            item = normalise(t, body)
            if item is not None:
                out.append(item)
        return out

    def close(self):
        try:
            self.send(Terminate)
        except OSError:
            pass
        self.sock.close()


def normalise(t, body):
    """(type, detail) with what may legitimately differ between servers removed: notices and
    parameter reports vanish, rows keep their values, errors keep their SQLSTATE."""
    t = t.decode()
    if t in ("N", "S"):
        return None
    if t == "C":
        return (t, body.rstrip(b"\0").decode())
    if t == "D":
        n = struct.unpack("!H", body[:2])[0]
        vals, i = [], 2
        for _ in range(n):
            ln = struct.unpack("!i", body[i:i + 4])[0]
            i += 4
            if ln < 0:
                vals.append(None)
            else:
                vals.append(body[i:i + ln].decode("latin1"))
                i += ln
        return (t, tuple(vals))
    if t == "E":
        return (t, error_field(body, "C"))
    if t == "Z":
        return (t, body.decode())
    if t == "T":
        n = struct.unpack("!H", body[:2])[0]
        names, i = [], 2
        for _ in range(n):
            j = body.index(b"\0", i)
            names.append(body[i:j].decode())
            i = j + 1 + 18
        return (t, tuple(names))
    return (t, None)
