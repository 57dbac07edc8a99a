using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace ActorBlk.Testing;

/// <summary>
/// A throw-away certificate authority and a server certificate it signed, for TLS specs: the
/// server certificate names <c>localhost</c> (or the name given) and 127.0.0.1 and carries its private key.
/// </summary>
public sealed class TestCertificates : IDisposable
{
    /// <summary>Creates a CA called <paramref name="caName"/> and a server certificate signed by it, for <paramref name="serverName"/> and 127.0.0.1.</summary>
    public TestCertificates(string caName = "ActorBlk test CA", string serverName = "localhost")
    {
        using var caKey = RSA.Create(2048);
        var caRequest = new CertificateRequest($"CN={caName}", caKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        caRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(caRequest.PublicKey, false));
        Authority = caRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));

        ServerKey = RSA.Create(2048);
        var request = new CertificateRequest($"CN={serverName}", ServerKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName(serverName);
        names.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        var serial = new byte[8];
        RandomNumberGenerator.Fill(serial);
        using var signed = request.Create(Authority, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(29), serial);
        // Through PKCS#12 so the key is usable by SslStream on every platform.
        using var withKey = signed.CopyWithPrivateKey(ServerKey);
        Server = X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>
    /// A self-signed certificate, <c>CN=</c><paramref name="commonName"/>, for 127.0.0.1, with its
    /// private key: remoting's pinned certificate or an export's own, as README's "Security" makes one.
    /// </summary>
    public static X509Certificate2 SelfSigned(string commonName = "actorblk")
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN={commonName}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
    }

    /// <summary>The CA certificate (with its key).</summary>
    public X509Certificate2 Authority { get; }

    /// <summary>The server certificate with its private key.</summary>
    public X509Certificate2 Server { get; }

    /// <summary>The server certificate's private key.</summary>
    public RSA ServerKey { get; }

    /// <summary>Writes the CA certificate as PEM to <paramref name="path"/> and returns the path.</summary>
    public string WriteAuthorityPem(string path)
    {
        File.WriteAllText(path, Authority.ExportCertificatePem());
        return path;
    }

    /// <summary>Writes the server certificate and its key as two PEM files (libnbd/gnutls and hocon layout).</summary>
    public (string Certificate, string Key) WriteServerPem(string certificatePath, string keyPath)
    {
        File.WriteAllText(certificatePath, Server.ExportCertificatePem());
        File.WriteAllText(keyPath, ServerKey.ExportPkcs8PrivateKeyPem());
        return (certificatePath, keyPath);
    }

    /// <summary>
    /// Writes a client certificate the CA signed (<c>CN=</c><paramref name="commonName"/>, for TLS
    /// client authentication) and its key as two PEM files: a <c>tls-certificates</c> directory's
    /// <c>client-cert.pem</c> and <c>client-key.pem</c>, for a server that verifies its clients.
    /// </summary>
    public (string Certificate, string Key) WriteClientPem(string certificatePath, string keyPath, string commonName = "actorblk client")
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN={commonName}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.2")], false));
        var serial = new byte[8];
        RandomNumberGenerator.Fill(serial);
        using var signed = request.Create(Authority, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(29), serial);
        File.WriteAllText(certificatePath, signed.ExportCertificatePem());
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
        return (certificatePath, keyPath);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Authority.Dispose();
        Server.Dispose();
        ServerKey.Dispose();
    }
}
