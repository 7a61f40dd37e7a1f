using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class TlsTeardownTests
{
    private static readonly Lazy<X509Certificate2> s_certificate = new(CreateSelfSigned);

    [Fact]
    public async Task TlsClose_WithUnreadRequestAndLargeResponse_PeerGetsEveryByteCloseNotifyAndFin()
    {
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (clientSocket)
        {
            await using var serverTls = new SslStream(server.GetStream(), leaveInnerStreamOpen: true);
            await using var clientTls = new SslStream(new NetworkStream(clientSocket, ownsSocket: false), leaveInnerStreamOpen: true, IsTestCertificate);
            await HandshakeAsync(serverTls, clientTls);

            // The client sends a request the server only partly reads, keeps sending, and reads the answer to the end.
            await clientTls.WriteAsync(Peer.Pattern(100_000)).AsTask().WithTimeout();
            byte[] one = new byte[1];
            Assert.Equal(1, await serverTls.ReadAsync(one).AsTask().WithTimeout());

            byte[] response = Peer.Pattern(3 * 1024 * 1024);
            Task serverSide = Task.Run(async () =>
            {
                await serverTls.WriteAsync(response);
                return await serverTls.CloseAsync(server);
            });

            using var received = new MemoryStream();
            byte[] buffer = new byte[64 * 1024];
            int n;
            while ((n = await clientTls.ReadAsync(buffer).AsTask().WithTimeout()) > 0)
            {
                received.Write(buffer, 0, n);
            }

            // The client saw close_notify (ReadAsync returned 0); it answers with its own, then FIN.
            await clientTls.ShutdownAsync().WithTimeout();
            clientSocket.Shutdown(SocketShutdown.Send);
            Assert.Equal(response, received.ToArray());

            CloseResult result = await ((Task<CloseResult>)serverSide).WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task TlsClose_PeerSendsCloseNotifyButNoFin_EndsGracefullyWithoutWaitingForFin()
    {
        var options = new ManagedConnectionOptions { DrainIdleTimeout = TimeSpan.FromMinutes(5), DrainTimeout = TimeSpan.FromMinutes(10) };
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (clientSocket)
        {
            await using var serverTls = new SslStream(server.GetStream(), leaveInnerStreamOpen: true);
            await using var clientTls = new SslStream(new NetworkStream(clientSocket, ownsSocket: false), leaveInnerStreamOpen: true, IsTestCertificate);
            await HandshakeAsync(serverTls, clientTls);

            Task<CloseResult> close = serverTls.CloseAsync(server).AsTask();
            Assert.Equal(0, await clientTls.ReadAsync(new byte[10]).AsTask().WithTimeout());
            await clientTls.ShutdownAsync().WithTimeout(); // close_notify, but the client keeps its TCP send side open

            CloseResult result = await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task TlsHalfClose_ServerReadsAfterItsCloseNotify()
    {
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        await using (server)
        using (clientSocket)
        {
            await using var serverTls = new SslStream(server.GetStream(), leaveInnerStreamOpen: true);
            await using var clientTls = new SslStream(new NetworkStream(clientSocket, ownsSocket: false), leaveInnerStreamOpen: true, IsTestCertificate);
            await HandshakeAsync(serverTls, clientTls);

            await serverTls.ShutdownSendAsync(server).WithTimeout();
            Assert.Equal(ConnectionState.SendShutdown, server.State);
            Assert.Equal(0, await clientTls.ReadAsync(new byte[10]).AsTask().WithTimeout());

            await clientTls.WriteAsync(new byte[] { 5, 6 }).AsTask().WithTimeout();
            byte[] got = new byte[2];
            Assert.Equal(2, await serverTls.ReadAsync(got).AsTask().WithTimeout());
            Assert.Equal(new byte[] { 5, 6 }, got);
        }
    }

    private static async Task HandshakeAsync(SslStream server, SslStream client)
    {
        Task serverAuth = server.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
        {
            ServerCertificate = s_certificate.Value,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        });
        Task clientAuth = client.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "localhost" });
        await Task.WhenAll(serverAuth, clientAuth).WithTimeout();
    }

    // Pins the certificate this test made: any other is refused.
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
        // Round-trip through PKCS#12 so the private key is usable by the TLS stack on every platform.
        return X509CertificateLoader.LoadPkcs12(certificate.Export(X509ContentType.Pkcs12), password: null);
    }
}
