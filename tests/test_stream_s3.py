"""Streaming a prepared shard folder from a real local S3-compatible server (``moto.server``, issue 13).

The server runs as its own process on a free localhost port, over HTTPS with a certificate signed by a
throw-away CA: litdata 0.2.76 downloads chunks with obstore, which refuses plain ``http://`` endpoints (it
drops ``allow_http``), so a local bucket has to be served over TLS, as MinIO in production usually is. boto3
trusts the CA through ``AWS_CA_BUNDLE``, obstore through ``SSL_CERT_FILE``. The shard folder is written by
``python -m ssl_siamese.data.prepare`` from real Imagenette photos, uploaded, then read back through
``SSLDataModule("stream", data_dir="s3://...")`` and compared with the decoded source files.

Run: ``pip install "moto[server]"`` (in the ``dev`` extra); the tests skip without it or without Imagenette.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from torchvision.io import ImageReadMode, decode_image

from ssl_siamese.data import SSLDataModule

from helpers import free_port
from test_stream import TAR, _fingerprints, photo_folder, prepare

pytest.importorskip("moto.server", reason='needs a local S3 server: pip install "moto[server]"')
pytestmark = pytest.mark.skipif(TAR is None, reason="Imagenette (../shared/data/imagenette-224) not found")

BUCKET = "ssl-siamese-test"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def write_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a 127.0.0.1 server certificate signed by it: ``(ca.pem, server.pem, server-key.pem)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(name: str, key, issuer: x509.Name | None, issuer_key, ca: bool) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:  # rustls (obstore) checks the address against the subject alternative names
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("ssl_siamese test CA", ca_key, None, ca_key, ca=True)
    server = certificate("127.0.0.1", server_key, ca.subject, ca_key, ca=False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """``(endpoint URL, CA file)`` of a moto S3 server process (started here, waited for by ``bucket``)."""
    ca, cert, key = write_certificates(tmp_path_factory.mktemp("tls"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port),
                               "-c", str(cert), "-k", str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield f"https://127.0.0.1:{port}", ca, server
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    """``(s3:// URL of the uploaded shard folder, source photo folder)``: ~30 photos in 3 classes."""
    import boto3

    endpoint, ca, server = s3_server
    photos = photo_folder(tmp_path_factory.mktemp("photos"), per_class=8)  # the server starts meanwhile
    shards = prepare(photos, tmp_path_factory.mktemp("shards") / "out")
    port = int(endpoint.rsplit(":", 1)[1])
    for _ in range(300):
        if server.poll() is not None:
            pytest.fail(f"moto.server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    client = boto3.client("s3", endpoint_url=endpoint, verify=str(ca), aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name=KEYS["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket=BUCKET)
    prefix = f"runs/{uuid.uuid4().hex[:8]}/shards"
    for path in shards.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(shards).as_posix()}")
    return f"s3://{BUCKET}/{prefix}", photos


@pytest.fixture(params=["AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"])
def s3_env(request, s3_server, monkeypatch, tmp_path):
    """Dummy credentials and the endpoint in the environment (both variables the library reads), the CA
    trusted by boto3 and obstore, and litdata's chunk cache in ``tmp_path``."""
    endpoint, ca, _ = s3_server
    for name in ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**KEYS, request.param: endpoint, "AWS_CA_BUNDLE": str(ca), "SSL_CERT_FILE": str(ca)}.items():
        monkeypatch.setenv(name, value)
    # litdata reads LITDATA_CACHE_DIR at import; without this the chunks would land in ~/.lightning/chunks
    monkeypatch.setattr("litdata.utilities.dataset_utilities._LITDATA_CACHE_DIR", str(tmp_path / "cache"),
                        raising=False)
    return request.param


def source_fingerprints(folder: Path, classes: list[str]) -> list[str]:
    """Fingerprints of the JPEG files under ``folder/<class>/``, decoded here (prepare keeps their bytes)."""
    prints = []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.jpg")):
            image = decode_image(str(path), mode=ImageReadMode.RGB)
            sizes = torch.tensor([image.shape[1:]])
            prints += _fingerprints((image[None], torch.tensor([label]), sizes))
    return prints


def test_bucket_stream_serves_every_training_image_once_per_epoch_and_eval_loaders(bucket, s3_env):
    url, photos = bucket
    dm = SSLDataModule("stream", data_dir=url, image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    classes = sorted(p.name for p in (photos / "train").iterdir())
    assert dm.num_classes == len(classes) == 3
    expected = source_fingerprints(photos / "train", classes)
    assert len(set(expected)) == len(expected) == 24 and len(expected) % 4 == 0  # drop_last drops nothing
    loader = dm.train_dataloader()
    for epoch in range(2):
        seen = [fp for batch in loader for fp in _fingerprints(batch)]
        assert sorted(seen) == sorted(expected), f"epoch {epoch}: each training image once, with its label"
    bank, query = dm.val_dataloader()
    bank_labels = torch.cat([labels for images, labels in bank if images.shape[1:] == (3, 32, 32)])
    assert sorted(bank_labels.tolist()) == sorted(int(fp.split(":")[0]) for fp in expected)
    query_labels = torch.cat([labels for _, labels in query])
    assert sorted(query_labels.tolist()) == sorted(int(fp.split(":")[0])
                                                   for fp in source_fingerprints(photos / "val", classes))
