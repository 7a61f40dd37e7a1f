using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Every public entry point, given bad input or called in the wrong state, throws a precise exception.</summary>
public sealed class BadInputTests
{
    private sealed record Case(string Name, Type Expected, Func<Task> Act);

    [Fact]
    public async Task EveryPublicMethod_WithInvalidArgumentsOrState_ThrowsAPreciseException()
    {
        (Socket peer, ManagedConnection closed) = await Loopback.CreateManagedServerAsync();
        peer.Shutdown(SocketShutdown.Send);
        await closed.CloseAsync().WithTimeout();
        peer.Dispose();

        (Socket peer2, ManagedConnection halfClosed) = await Loopback.CreateManagedServerAsync();
        await halfClosed.ShutdownSendAsync().WithTimeout();

        (Socket peer3, ManagedConnection piped) = await Loopback.CreateManagedServerAsync();
        _ = piped.Transport;

        (Socket peer4, ManagedConnection direct) = await Loopback.CreateManagedServerAsync();
        Stream stream = direct.GetStream();
        Stream disposedStream = direct.GetStream();
        await disposedStream.DisposeAsync();

        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        using var unconnected = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using Socket listening = Loopback.Listen();
        var disposedSocket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        disposedSocket.Dispose();
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        ManagedListener stopped = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        await stopped.StopAsync(TimeSpan.Zero).WithTimeout();
        var options = new ManagedConnectionOptions();
        var listenerOptions = new ManagedListenerOptions();

        Case[] cases =
        [
            // Factories
            new("ConnectAsync(null)", typeof(ArgumentNullException), () => ManagedConnection.ConnectAsync(null!).AsTask()),
            new("ConnectAsync(unsupported end point kind)", typeof(ArgumentException), () => ManagedConnection.ConnectAsync(new OtherEndPoint()).AsTask()),
            new("ConnectAsync(unix end point nobody listens on)", typeof(SocketException), () => ManagedConnection.ConnectAsync(new UnixDomainSocketEndPoint("/tmp/safesockets-none-" + Guid.NewGuid().ToString("N"))).AsTask()),
            new("ConnectAsync(refused)", typeof(SocketException), () => ManagedConnection.ConnectAsync(RefusedEndPoint()).AsTask()),
            new("Adopt(null)", typeof(ArgumentNullException), () => Run(() => ManagedConnection.Adopt(null!))),
            new("Adopt(UDP socket)", typeof(ArgumentException), () => Run(() => ManagedConnection.Adopt(udp))),
            new("Adopt(unconnected socket)", typeof(ArgumentException), () => Run(() => ManagedConnection.Adopt(unconnected))),
            new("Adopt(listening socket)", typeof(ArgumentException), () => Run(() => ManagedConnection.Adopt(listening))),
            new("Adopt(disposed socket)", typeof(ObjectDisposedException), () => Run(() => ManagedConnection.Adopt(disposedSocket))),

            // Operations after close
            new("ReceiveAsync after close", typeof(ObjectDisposedException), () => closed.ReceiveAsync(new byte[1]).AsTask()),
            new("SendAsync after close", typeof(ObjectDisposedException), () => closed.SendAsync(new byte[1]).AsTask()),
            new("ShutdownSendAsync after close", typeof(ObjectDisposedException), () => closed.ShutdownSendAsync().AsTask()),
            new("Acquire after close", typeof(ObjectDisposedException), () => Run(() => closed.Acquire())),
            new("GetStream after close", typeof(ObjectDisposedException), () => Run(() => closed.GetStream())),
            new("Transport after close", typeof(ObjectDisposedException), () => Run(() => closed.Transport)),

            // Wrong state
            new("SendAsync after ShutdownSendAsync", typeof(InvalidOperationException), () => halfClosed.SendAsync(new byte[1]).AsTask()),
            new("SendAsync on a Transport connection", typeof(InvalidOperationException), () => piped.SendAsync(new byte[1]).AsTask()),
            new("ReceiveAsync on a Transport connection", typeof(InvalidOperationException), () => piped.ReceiveAsync(new byte[1]).AsTask()),
            new("GetStream on a Transport connection", typeof(InvalidOperationException), () => Run(() => piped.GetStream())),
            new("Transport on a Send/Receive connection", typeof(InvalidOperationException), () => Run(() => direct.Transport)),

            // Stream
            new("Stream.Seek", typeof(NotSupportedException), () => Run(() => stream.Seek(0, SeekOrigin.Begin))),
            new("Stream.Length", typeof(NotSupportedException), () => Run(() => stream.Length)),
            new("Stream.SetLength", typeof(NotSupportedException), () => Run(() => stream.SetLength(1))),
            new("Stream.ReadAsync after dispose", typeof(ObjectDisposedException), () => disposedStream.ReadAsync(new byte[1]).AsTask()),
            new("Stream.WriteAsync after dispose", typeof(ObjectDisposedException), () => disposedStream.WriteAsync(new byte[1]).AsTask()),

            // TLS helpers
            new("SslStream.CloseAsync(null connection)", typeof(ArgumentNullException), () => new SslStream(new MemoryStream()).CloseAsync(null!).AsTask()),
            new("SslStream.ShutdownSendAsync(null stream)", typeof(ArgumentNullException), () => ((SslStream)null!).ShutdownSendAsync(direct).AsTask()),

            // Options
            new("DrainTimeout = 0", typeof(ArgumentOutOfRangeException), () => Run(() => options.DrainTimeout = TimeSpan.Zero)),
            new("DrainTimeout = infinite", typeof(ArgumentOutOfRangeException), () => Run(() => options.DrainTimeout = Timeout.InfiniteTimeSpan)),
            new("DrainIdleTimeout < 0", typeof(ArgumentOutOfRangeException), () => Run(() => options.DrainIdleTimeout = TimeSpan.FromSeconds(-1))),
            new("MaxDrainBytes < 0", typeof(ArgumentOutOfRangeException), () => Run(() => options.MaxDrainBytes = -1)),
            new("CloseWaitTimeout < 0", typeof(ArgumentOutOfRangeException), () => Run(() => options.CloseWaitTimeout = TimeSpan.FromSeconds(-1))),
            new("MaxInputBufferSize = 0", typeof(ArgumentOutOfRangeException), () => Run(() => options.MaxInputBufferSize = 0)),
            new("MaxOutputBufferSize = 0", typeof(ArgumentOutOfRangeException), () => Run(() => options.MaxOutputBufferSize = 0)),
            new("TimeProvider = null", typeof(ArgumentNullException), () => Run(() => options.TimeProvider = null!)),
            new("Logger = null", typeof(ArgumentNullException), () => Run(() => options.Logger = null!)),
            new("Listener Connection = null", typeof(ArgumentNullException), () => Run(() => listenerOptions.Connection = null!)),
            new("Listener Backlog = 0", typeof(ArgumentOutOfRangeException), () => Run(() => listenerOptions.Backlog = 0)),
            new("Listener MaxConnections = 0", typeof(ArgumentOutOfRangeException), () => Run(() => listenerOptions.MaxConnections = 0)),
            new("Listener MaxDrainingConnections < 0", typeof(ArgumentOutOfRangeException), () => Run(() => listenerOptions.MaxDrainingConnections = -1)),

            // Listener
            new("ManagedListener.Start(null)", typeof(ArgumentNullException), () => Run(() => ManagedListener.Start(null!))),
            new("ManagedListener.Start(DnsEndPoint)", typeof(ArgumentException), () => Run(() => ManagedListener.Start(new DnsEndPoint("localhost", 0)))),
            new("ManagedListener.Start(port in use)", typeof(SocketException), () => Run(() => ManagedListener.Start(listener.LocalEndPoint))),
            new("StopAsync(negative grace)", typeof(ArgumentOutOfRangeException), () => Run(() => listener.StopAsync(TimeSpan.FromSeconds(-5)))),
            new("AcceptAsync after stop", typeof(ObjectDisposedException), () => stopped.AcceptAsync().AsTask()),
        ];

        var wrong = new List<string>();
        foreach (Case c in cases)
        {
            Exception? thrown = await Record.ExceptionAsync(() => c.Act().WaitAsync(TestTimeouts.Passing));
            if (thrown is null || thrown.GetType() != c.Expected)
            {
                wrong.Add($"{c.Name}: expected {c.Expected.Name}, got {thrown?.GetType().Name ?? "nothing"}");
            }
            else if (string.IsNullOrWhiteSpace(thrown.Message))
            {
                wrong.Add($"{c.Name}: {c.Expected.Name} without a message");
            }
        }

        Assert.True(wrong.Count == 0, string.Join(Environment.NewLine, wrong));

        peer2.Dispose();
        peer3.Dispose();
        peer4.Dispose();
        await halfClosed.DisposeAsync();
        await piped.DisposeAsync();
        await direct.DisposeAsync();
    }

    private static Task Run(Action action)
    {
        action();
        return Task.CompletedTask;
    }

    private static Task Run(Func<object?> func)
    {
        _ = func();
        return Task.CompletedTask;
    }

    private static EndPoint RefusedEndPoint()
    {
        // A bound, not listening, socket's port: connecting there is refused. Kept alive by the static field.
        s_placeholder ??= new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        if (!s_placeholder.IsBound)
        {
            s_placeholder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        }

        return s_placeholder.LocalEndPoint!;
    }

    private static Socket? s_placeholder;
}
