using System.Net;
using System.Net.Sockets;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>Connected loopback socket pairs: a listener on port 0, never a guessed port.</summary>
internal static class Loopback
{
    public static async Task<(Socket Client, Socket Server)> CreatePairAsync(AddressFamily family = AddressFamily.InterNetwork)
    {
        IPAddress address = family == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Loopback : IPAddress.Loopback;
        using var listener = new Socket(family, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(address, 0));
        listener.Listen(1);
        var client = new Socket(family, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            Task<Socket> accept = listener.AcceptAsync();
            await client.ConnectAsync(listener.LocalEndPoint!).WithTimeout();
            Socket server = await accept.WithTimeout();
            server.NoDelay = true;
            return (client, server);
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>A raw client socket connected to a <see cref="ManagedConnection"/> server end.</summary>
    public static async Task<(Socket Peer, ManagedConnection Connection)> CreateManagedServerAsync(ManagedConnectionOptions? options = null, AddressFamily family = AddressFamily.InterNetwork)
    {
        (Socket client, Socket server) = await CreatePairAsync(family);
        return (client, ManagedConnection.Adopt(server, options));
    }

    /// <summary>A pair whose buffers are small on both ends (set before the connection exists, so the window is small
    /// from the start): a send of a few MiB the peer does not read can never fit in the kernel's buffers, whatever the
    /// machine's loopback defaults are.</summary>
    public static async Task<(Socket Client, Socket Server)> CreateSmallBufferPairAsync(int bufferSize = SmallBuffer)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.ReceiveBufferSize = bufferSize;
        listener.SendBufferSize = bufferSize;
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
        {
            NoDelay = true,
            ReceiveBufferSize = bufferSize,
            SendBufferSize = bufferSize,
        };
        try
        {
            Task<Socket> accept = listener.AcceptAsync();
            await client.ConnectAsync(listener.LocalEndPoint!).WithTimeout();
            Socket server = await accept.WithTimeout();
            server.NoDelay = true;
            server.ReceiveBufferSize = bufferSize;
            server.SendBufferSize = bufferSize;
            return (client, server);
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>A raw client socket connected to a <see cref="ManagedConnection"/> server end, small buffers on both ends.</summary>
    public static async Task<(Socket Peer, ManagedConnection Connection)> CreateSmallBufferManagedServerAsync(ManagedConnectionOptions? options = null)
    {
        (Socket client, Socket server) = await CreateSmallBufferPairAsync();
        return (client, ManagedConnection.Adopt(server, options));
    }

    /// <summary>The buffer size of <see cref="CreateSmallBufferPairAsync"/>: with it both ends together hold well under 1 MiB.</summary>
    public const int SmallBuffer = 16 * 1024;

    /// <summary>A listening socket on loopback port 0, for tests that need to accept by themselves.</summary>
    public static Socket Listen(AddressFamily family = AddressFamily.InterNetwork, int backlog = 16)
    {
        IPAddress address = family == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Loopback : IPAddress.Loopback;
        var listener = new Socket(family, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(address, 0));
        listener.Listen(backlog);
        return listener;
    }

    public static int Port(this Socket socket) => ((IPEndPoint)socket.LocalEndPoint!).Port;

    public static int Port(this EndPoint? endPoint) => ((IPEndPoint)endPoint!).Port;
}
