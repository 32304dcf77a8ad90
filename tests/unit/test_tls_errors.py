"""TLS failures of aiormq and asyncpg, said as such by the adapters."""

from __future__ import annotations

import ssl

import aiormq
import pytest

from statusek.adapters.postgres.errors import translated
from statusek.adapters.rabbitmq.errors import describe
from statusek.core.errors import StoreUnavailable


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}"
    )
    e.verify_code, e.verify_message = code, message
    return e


def wrapped_by_aiormq(e: BaseException) -> aiormq.exceptions.AMQPConnectionError:
    """What aiormq raises: AMQPConnectionError(*e.args) from e."""
    try:
        raise aiormq.exceptions.AMQPConnectionError(*e.args) from e
    except aiormq.exceptions.AMQPConnectionError as wrapper:
        return wrapper


def test_untrusted_broker_certificate_names_cafile() -> None:
    """An unknown issuer is a certificate verification failure, and the hint is the URL's cafile."""
    line = describe(wrapped_by_aiormq(verify_error(20, "unable to get local issuer certificate")))
    assert line.startswith("TLS certificate verification failed: the certificate of RabbitMQ is not trusted")
    assert "cafile" in line


def test_host_name_mismatch_says_which_name_to_use() -> None:
    """A certificate for another host asks for a host name the certificate names."""
    error = verify_error(62, "Hostname mismatch, certificate is not valid for 'rabbit.internal'.")
    line = describe(wrapped_by_aiormq(error), "amqps://u:s3cret-pw@rabbit.internal/")
    assert "Hostname mismatch" in line and "host name or IP address that the certificate names" in line
    assert "s3cret-pw" not in line


def test_plain_port_is_a_handshake_failure() -> None:
    """amqps:// to a plain AMQP port is a failed handshake, not a verification failure."""
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"
    assert describe(wrapped_by_aiormq(error)).startswith("TLS handshake with RabbitMQ failed")


def test_other_broker_errors_are_unchanged() -> None:
    """Errors without TLS in them keep their descriptions."""
    assert describe(ConnectionRefusedError(111, "refused")).startswith("connection refused")


async def test_postgres_verification_failure_names_sslrootcert() -> None:
    """asyncpg's SSLCertVerificationError becomes StoreUnavailable saying it, raised from the original."""
    original = verify_error(19, "self-signed certificate in certificate chain")
    with pytest.raises(StoreUnavailable, match="TLS certificate verification failed") as raised:
        async with translated():
            raise original
    assert "sslrootcert" in str(raised.value) and raised.value.__cause__ is original
