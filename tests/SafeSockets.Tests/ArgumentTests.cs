using System.Net;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class ArgumentTests
{
    [Fact]
    public void Options_Defaults_AreTheDocumentedAnchors()
    {
        var options = new ManagedConnectionOptions();
        Assert.Equal(TimeSpan.FromSeconds(30), options.DrainTimeout);
        Assert.Equal(TimeSpan.FromSeconds(5), options.DrainIdleTimeout);
        Assert.Equal(256 * 1024, options.MaxDrainBytes);
        Assert.Equal(TimeSpan.FromSeconds(5), options.CloseWaitTimeout);
        Assert.Same(TimeProvider.System, options.TimeProvider);
    }

    [Fact]
    public void Options_InvalidValues_ThrowArgumentOutOfRangeNamingTheOption()
    {
        var options = new ManagedConnectionOptions();
        Assert.Equal("DrainTimeout", Assert.Throws<ArgumentOutOfRangeException>(() => options.DrainTimeout = TimeSpan.Zero).ParamName);
        Assert.Equal("DrainTimeout", Assert.Throws<ArgumentOutOfRangeException>(() => options.DrainTimeout = TimeSpan.FromSeconds(-1)).ParamName);
        Assert.Equal("DrainTimeout", Assert.Throws<ArgumentOutOfRangeException>(() => options.DrainTimeout = Timeout.InfiniteTimeSpan).ParamName);
        Assert.Equal("DrainTimeout", Assert.Throws<ArgumentOutOfRangeException>(() => options.DrainTimeout = TimeSpan.MaxValue).ParamName);
        Assert.Equal("DrainIdleTimeout", Assert.Throws<ArgumentOutOfRangeException>(() => options.DrainIdleTimeout = TimeSpan.Zero).ParamName);
        Assert.Equal("MaxDrainBytes", Assert.Throws<ArgumentOutOfRangeException>(() => options.MaxDrainBytes = -1).ParamName);
        Assert.Equal("CloseWaitTimeout", Assert.Throws<ArgumentOutOfRangeException>(() => options.CloseWaitTimeout = TimeSpan.FromTicks(-1)).ParamName);
        Assert.Throws<ArgumentNullException>(() => options.TimeProvider = null!);

        // Zero is meaningful for these two and accepted.
        options.MaxDrainBytes = 0;
        options.CloseWaitTimeout = TimeSpan.Zero;
        Assert.Equal(TimeSpan.FromSeconds(30), options.DrainTimeout);
    }

    [Fact]
    public async Task Options_AreCopiedWhenTheConnectionIsCreated()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMinutes(5) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            options.CloseWaitTimeout = TimeSpan.Zero;
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);
            Assert.False(connection.Completion.IsCompleted);
            await connection.DisposeAsync();
        }
    }

    [Fact]
    public void Adopt_Null_ThrowsArgumentNull()
    {
        Assert.Throws<ArgumentNullException>(() => ManagedConnection.Adopt(null!));
    }

    [Fact]
    public void Adopt_UdpSocket_ThrowsArgumentNamingTheType()
    {
        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        var ex = Assert.Throws<ArgumentException>(() => ManagedConnection.Adopt(udp));
        Assert.Contains("TCP stream", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Adopt_ListeningSocket_ThrowsArgument()
    {
        using Socket listener = Loopback.Listen();
        var ex = Assert.Throws<ArgumentException>(() => ManagedConnection.Adopt(listener));
        Assert.Contains("listening", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Adopt_UnconnectedSocket_ThrowsArgument()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var ex = Assert.Throws<ArgumentException>(() => ManagedConnection.Adopt(socket));
        Assert.Contains("not connected", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Adopt_DisposedSocket_ThrowsObjectDisposed()
    {
        (Socket client, Socket server) = await Loopback.CreatePairAsync();
        client.Dispose();
        server.Dispose();
        Assert.Throws<ObjectDisposedException>(() => ManagedConnection.Adopt(server));
    }

    [Fact]
    public async Task ConnectAsync_BadArguments_Throw()
    {
        await Assert.ThrowsAsync<ArgumentNullException>(() => ManagedConnection.ConnectAsync(null!).AsTask());
        await Assert.ThrowsAsync<ArgumentException>(() => ManagedConnection.ConnectAsync(new OtherEndPoint()).AsTask());
    }
}

/// <summary>An end point kind no stream socket here can connect to.</summary>
internal sealed class OtherEndPoint : System.Net.EndPoint
{
    public override System.Net.Sockets.AddressFamily AddressFamily => System.Net.Sockets.AddressFamily.AppleTalk;
}
