"""Test DKIM keys: PEM private keys written like Kubernetes secrets (one
file each), the dkim-sign keys file, and the public keys as DNS TXT records
served to Debian's python3-dkim through its `dnsfunc` hook."""

import base64
import os
import subprocess


def openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], input=stdin, check=True,
                          capture_output=True).stdout


class DkimKeys:
    """keys: [(domain, selector, "rsa-sha256" | "ed25519-sha256")]."""

    def __init__(self, workdir, keys):
        self.secret_dir = os.path.join(workdir, "dkim-secret")
        os.makedirs(self.secret_dir)
        self.txt = {}
        domains = {}
        for domain, selector, algorithm in keys:
            name = f"{domain}.{selector}.pem"
            path = os.path.join(self.secret_dir, name)
            if algorithm == "rsa-sha256":
                openssl("genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", path)
                der = openssl("pkey", "-in", path, "-pubout", "-outform",
                              "DER")
                record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
            else:
                openssl("genpkey", "-algorithm", "ed25519", "-out", path)
                der = openssl("pkey", "-in", path, "-pubout", "-outform",
                              "DER")
                # RFC 8463: the raw 32-octet key, not the SPKI wrapping.
                record = (b"v=DKIM1; k=ed25519; p="
                          + base64.b64encode(der[-32:]))
            self.txt[f"{selector}._domainkey.{domain}.".encode()] = record
            domains.setdefault(domain, []).append(
                f"    - selector: {selector}\n"
                f"      algorithm: {algorithm}\n"
                f"      key: {name}\n")
        self.keys_file = os.path.join(self.secret_dir, "keys.yaml")
        with open(self.keys_file, "w") as f:
            f.write("domains:\n")
            for domain, entries in domains.items():
                f.write(f"  {domain}:\n" + "".join(entries))

    def dnsfunc(self, name, timeout=5):
        if isinstance(name, str):
            name = name.encode()
        if not name.endswith(b"."):
            name += b"."
        return self.txt.get(name)


def signatures(message):
    """The DKIM-Signature fields' tags, top first: [{tag: value}]."""
    import re
    header = message.split(b"\r\n\r\n", 1)[0]
    out = []
    for m in re.finditer(rb"(?im)^DKIM-Signature:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
                         header):
        value = re.sub(rb"\s+", b"", m.group(1))
        tags = {}
        for part in value.split(b";"):
            if b"=" in part:
                k, v = part.split(b"=", 1)
                tags[k.decode()] = v.decode()
        out.append(tags)
    return out


def verify_all(message, keys):
    """Verifies every DKIM-Signature of `message` with Debian's python3-dkim
    (an independent implementation). Returns the signatures' tags; raises
    AssertionError naming the first one that does not verify."""
    import dkim
    sigs = signatures(message)
    for i, tags in enumerate(sigs):
        d = dkim.DKIM(message, minkey=1024)
        if not d.verify(idx=i, dnsfunc=keys.dnsfunc):
            raise AssertionError(
                f"signature {i} ({tags.get('a')}, d={tags.get('d')}, "
                f"s={tags.get('s')}) does not verify:\n"
                f"{message[:2000]!r}")
    return sigs
