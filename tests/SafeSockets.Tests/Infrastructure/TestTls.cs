using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>TLS over a managed server end and a raw client socket, with a self-signed certificate made for the test run.</summary>
internal static class TestTls
{
    private static readonly Lazy<X509Certificate2> s_certificate = new(CreateSelfSigned);

    /// <summary>Server TLS over <paramref name="server"/>'s stream, client TLS over <paramref name="client"/>; both handshaken.</summary>
    public static async Task<(SslStream Server, SslStream Client)> HandshakeAsync(ManagedConnection server, Socket client)
    {
        var serverTls = new SslStream(server.GetStream(), leaveInnerStreamOpen: true);
        var clientTls = new SslStream(new NetworkStream(client, ownsSocket: false), leaveInnerStreamOpen: true, IsTestCertificate);
        Task serverAuth = serverTls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
        {
            ServerCertificate = s_certificate.Value,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        });
        Task clientAuth = clientTls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "localhost" });
        await Task.WhenAll(serverAuth, clientAuth).WithTimeout();
        return (serverTls, clientTls);
    }

    /// <summary>A managed server end over loopback with <paramref name="options"/> and a raw client socket, TLS handshaken
    /// over both; disposing it disposes the two TLS streams and the client socket (the server end is the test's to close).</summary>
    public static async Task<TlsLoopback> OpenAsync(ManagedConnectionOptions? options = null)
    {
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        try
        {
            (SslStream serverTls, SslStream clientTls) = await HandshakeAsync(server, clientSocket);
            return new TlsLoopback(server, clientSocket, serverTls, clientTls);
        }
        catch
        {
            server.Abort();
            clientSocket.Dispose();
            throw;
        }
    }

    // Pins the certificate made here: any other is refused.
    private static bool IsTestCertificate(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors) =>
        certificate is not null && certificate.GetCertHashString() == s_certificate.Value.GetCertHashString();

    private static X509Certificate2 CreateSelfSigned()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        request.CertificateExtensions.Add(san.Build());
        using X509Certificate2 certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        return X509CertificateLoader.LoadPkcs12(certificate.Export(X509ContentType.Pkcs12), password: null);
    }
}

/// <summary>See <see cref="TestTls.OpenAsync"/>.</summary>
internal sealed record TlsLoopback(ManagedConnection Server, Socket ClientSocket, SslStream ServerTls, SslStream ClientTls) : IAsyncDisposable
{
    public async ValueTask DisposeAsync()
    {
        await ServerTls.DisposeAsync();
        await ClientTls.DisposeAsync();
        ClientSocket.Dispose();
    }
}
