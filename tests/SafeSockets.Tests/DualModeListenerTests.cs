using System.Net;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>A listener on [::] accepts IPv4 and IPv6 clients (dual mode), and reports IPv4 clients as IPv4.</summary>
public sealed class DualModeListenerTests
{
    [Theory]
    [InlineData(AddressFamily.InterNetwork)]
    [InlineData(AddressFamily.InterNetworkV6)]
    public async Task StartOnIPv6Any_AcceptsIPv4AndIPv6Clients_AndReportsTheirOwnAddress(AddressFamily clientFamily)
    {
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.IPv6Any, 0));
        int port = listener.LocalEndPoint.Port();
        IPAddress loopback = clientFamily == AddressFamily.InterNetwork ? IPAddress.Loopback : IPAddress.IPv6Loopback;
        using var client = new Socket(clientFamily, SocketType.Stream, ProtocolType.Tcp);
        Task<ManagedConnection> accept = listener.AcceptAsync().AsTask();
        await client.ConnectAsync(new IPEndPoint(loopback, port)).WithTimeout();
        await using ManagedConnection connection = await accept.WithTimeout();

        // As the client itself sees its address: 127.0.0.1:port for an IPv4 client, not ::ffff:127.0.0.1.
        Assert.Equal(client.LocalEndPoint, connection.RemoteEndPoint);
        Assert.Equal(client.RemoteEndPoint, connection.LocalEndPoint);

        await connection.SendAsync(new byte[] { 42 }).WithTimeout();
        byte[] buffer = new byte[1];
        Assert.Equal(1, await client.ReceiveAsync(buffer, SocketFlags.None).WithTimeout());
        client.Shutdown(SocketShutdown.Send);
        Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
    }

    [Fact]
    public void Start_WithADnsEndPoint_SaysWhatIsSupported()
    {
        ArgumentException error = Assert.Throws<ArgumentException>(() => ManagedListener.Start(new DnsEndPoint("localhost", 0)));
        Assert.Equal("localEndPoint", error.ParamName);
        Assert.Contains("IPEndPoint", error.Message, StringComparison.Ordinal);
        Assert.Contains("DnsEndPoint", error.Message, StringComparison.Ordinal);
    }
}
